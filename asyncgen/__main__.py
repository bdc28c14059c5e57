import sys

try:
    from asyncgen.cli import console
except KeyboardInterrupt:  # Ctrl-C while still importing, before main() handles it
    print("asyncgen: interrupted", file=sys.stderr)
    raise SystemExit(130)
raise SystemExit(console())
