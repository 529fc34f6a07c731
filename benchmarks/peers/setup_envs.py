"""Create one virtual environment per peer system, with pinned versions.

Usage::

    python benchmarks/peers/setup_envs.py [--only NAME,NAME] [--force]

Each peer gets its own environment under ``benchmarks/peers/.envs/<name>``
(git-ignored), so that their dependency trees never meet plait's or each
other's. Versions are exact; a peer that fails to install is written to
``.envs/<name>/FAILED`` with pip's last lines, and the driver reports it as
"n/a" instead of stopping the suite. An environment already built with the
same pins is kept unless ``--force`` is given.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import venv
from pathlib import Path

HERE = Path(__file__).resolve().parent
ENVS = HERE / ".envs"

#: Peer name -> exact requirements. Packages a peer imports without
#: declaring them are pinned here too, with a comment saying so.
PINS: dict[str, tuple[str, ...]] = {
    "swarms": ("swarms==16.0.3",),
    "praisonaiagents": ("praisonaiagents==1.7.17",),
    # nexus-agentos imports numpy and aiofiles without declaring them.
    "agentos": ("nexus-agentos==1.25.0", "numpy==2.4.6", "aiofiles==25.1.0"),
    "aiometer": ("aiometer==1.0.0",),
    "langgraph": ("langgraph==1.2.24",),
}


def env_python(name: str) -> Path:
    """The interpreter of peer ``name``'s environment."""
    return ENVS / name / "bin" / "python"


def failure_reason(name: str) -> str | None:
    """Why peer ``name``'s environment could not be built, or None."""
    marker = ENVS / name / "FAILED"
    if marker.exists():
        return marker.read_text(encoding="utf-8").strip() or "install failed"
    if not env_python(name).exists():
        return "environment not built (run benchmarks/peers/setup_envs.py)"
    return None


def _pins_file(name: str) -> Path:
    return ENVS / name / "PINS"


def build(name: str, force: bool = False) -> bool:
    """Create (or keep) peer ``name``'s environment; True when it is usable."""
    wanted = "\n".join(PINS[name])
    pins = _pins_file(name)
    if not force and pins.exists() and pins.read_text(encoding="utf-8") == wanted:
        print(f"{name}: kept ({', '.join(PINS[name])})")
        return True
    target = ENVS / name
    venv.EnvBuilder(clear=True, with_pip=True).create(target)
    command = [str(env_python(name)), "-m", "pip", "install", "-q"]
    done = subprocess.run(
        [*command, *PINS[name]], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
        (target / "FAILED").write_text(
            "pip install failed: " + " / ".join(tail), encoding="utf-8"
        )
        print(f"{name}: FAILED\n  " + "\n  ".join(tail))
        return False
    _pins_file(name).write_text(wanted, encoding="utf-8")
    print(f"{name}: built ({', '.join(PINS[name])})")
    return True


def main(argv: list[str] | None = None) -> int:
    """Build the environments named by ``--only`` (all by default)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default=",".join(PINS), help="comma-separated")
    parser.add_argument("--force", action="store_true", help="rebuild every env")
    args = parser.parse_args(argv)
    names = [n for n in args.only.split(",") if n]
    unknown = sorted(set(names) - set(PINS))
    if unknown:
        parser.error(f"unknown peer {unknown[0]!r}; choose from {', '.join(PINS)}")
    ENVS.mkdir(exist_ok=True)
    results = [build(name, args.force) for name in names]
    return 0 if any(results) or not names else 1


if __name__ == "__main__":
    sys.exit(main())
