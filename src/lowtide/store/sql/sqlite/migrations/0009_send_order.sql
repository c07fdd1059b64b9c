-- 0009: the order in which a batch's requests are claimed (lowtide.domain.prefix): send_order
-- is a request's rank, given at validation (lines that share a prompt prefix together, the
-- longest first within a group; 0 for every line when [scheduling] prefix_order is off, and
-- for the rows of batches validated before: file order, as before), and prefix_group the id
-- of the shared prefix it is sent with, for the router's backend affinity. Claims follow
-- (send_order, line), so their index leads with it.
ALTER TABLE requests ADD COLUMN send_order INTEGER NOT NULL DEFAULT 0;
ALTER TABLE requests ADD COLUMN prefix_group INTEGER NOT NULL DEFAULT 0;
DROP INDEX requests_by_state;
CREATE INDEX requests_by_state ON requests (batch_id, state, send_order, line);
