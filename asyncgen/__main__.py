import sys

try:
    from asyncgen.cli import main

    code = main()
except KeyboardInterrupt:  # Ctrl-C while still importing, before main() handles it
    print("asyncgen: interrupted", file=sys.stderr)
    code = 130
raise SystemExit(code)
