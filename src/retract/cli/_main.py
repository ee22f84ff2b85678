"""Placeholder until the CLI lands in this same change."""


def main() -> int:
    """Run the CLI."""
    return 0
