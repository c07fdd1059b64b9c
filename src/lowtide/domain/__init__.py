"""Pure domain: statuses, ids, the line formats, validation and billing. No I/O here."""
