"""tabula watch (not built yet)."""

HELP = "watch (not built yet)"


def add_arguments(parser):
    pass


def run(args) -> int:
    print("tabula watch: not built yet")
    return 2
