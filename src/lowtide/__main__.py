"""``python -m lowtide``: the command line."""

try:
    from lowtide.cli import main
except KeyboardInterrupt:  # Ctrl-C while the CLI loads, before main() handles it: the same exit
    raise SystemExit(130) from None

main()
