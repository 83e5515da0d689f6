"""Configs of the paper-table experiments (experiments/<name>.py): one base config per table."""
