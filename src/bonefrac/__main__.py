"""``python -m bonefrac ...``: the same CLI as the ``bonefrac`` command."""

from bonefrac.cli import app

if __name__ == "__main__":
    app(prog_name="bonefrac")
