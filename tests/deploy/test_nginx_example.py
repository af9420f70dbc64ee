"""deploy/nginx's configuration: nginx accepts it (skipped without nginx; `make cluster` installs it)."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from tests.embedded_test_env import PROJECT_ROOT

EXAMPLE = PROJECT_ROOT / "deploy" / "nginx" / "personalization.conf"


@pytest.mark.skipif(shutil.which("nginx") is None, reason="nginx is not installed")
def test_nginx_accepts_the_example_in_its_http_block(tmp_path):
    # As /etc/nginx/nginx.conf includes conf.d/*.conf, with this test's own pid file and logs.
    (tmp_path / "nginx.conf").write_text(
        f"pid {tmp_path / 'nginx.pid'};\nerror_log {tmp_path / 'error.log'};\nevents {{}}\n"
        f"http {{\n    access_log off;\n    include {EXAMPLE};\n}}\n"
    )

    result = subprocess.run(
        ["nginx", "-t", "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf"), "-e", str(tmp_path / "error.log")],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip

    assert result.returncode == 0, result.stderr
