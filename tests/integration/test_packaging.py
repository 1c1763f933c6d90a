"""The installed package carries what the server reads at run time (migrations, SQL), so a
`pip install .` (the Docker image, /opt/embedq/venv) starts as a checkout does."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

from embedq_server.database import migrations_dir

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_the_wheel_ships_migrations_sql_and_console_scripts(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path), "."],
        cwd=REPO_ROOT,
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("embedq-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        entry_points = next(n for n in names if n.endswith("entry_points.txt"))
        scripts = archive.read(entry_points).decode()
    for migration in migrations_dir().glob("*.sql"):
        assert f"embedq_server/migrations/{migration.name}" in names
    assert "embedq_server/queries.sql" in names
    assert "embedq-server = embedq_server.cli:main" in scripts
    assert "embedq-worker = embedq_worker.cli:main" in scripts
