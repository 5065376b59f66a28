"""tabula export (not built yet)."""

HELP = "export (not built yet)"


def add_arguments(parser):
    pass


def run(args) -> int:
    print("tabula export: not built yet")
    return 2
