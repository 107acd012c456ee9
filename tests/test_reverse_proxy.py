"""The server behind the nginx site that `radcascade.deploy` generates: TLS, allowed workstations or
a password, nothing else gets in; the real MONAILabelClient works through it.

nginx comes from Debian's packages (``.ci/run`` installs it and sets RADCASCADE_REQUIRE_NGINX=1, so
in CI a missing nginx fails instead of skipping).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import requests
import SimpleITK as sitk
from monailabel.client import MONAILabelClient
from monailabel.client.client import MONAILabelClientException

from conftest import copy_weights, make_studies, start_server, stop_server
from radcascade.deploy import NginxSite, main as deploy_main, render_nginx_site

pytestmark = pytest.mark.server

NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
USER, PASSWORD = "radiologist", "correct horse battery staple"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port}")


class Nginx:
    """nginx in the foreground with everything (pid, logs, temp files) under one folder."""

    def __init__(self, folder: Path, site_conf: str):
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "site.conf").write_text(site_conf)
        temp_dirs = "".join(f"    {kind}_temp_path {folder / kind};\n"
                            for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
        (folder / "nginx.conf").write_text(
            ("user root;\n" if os.geteuid() == 0 else "")
            + f"daemon off;\npid {folder / 'nginx.pid'};\nerror_log {folder / 'error.log'} info;\n"
            + "events {}\nhttp {\n"
            + f"    access_log {folder / 'access.log'};\n{temp_dirs}    include {folder / 'site.conf'};\n}}\n")
        check = subprocess.run([NGINX, "-t", "-p", str(folder), "-c", str(folder / "nginx.conf")],
                               capture_output=True, text=True)
        assert check.returncode == 0, check.stderr
        self.process = self._start()

    def _start(self) -> subprocess.Popen:
        return subprocess.Popen([NGINX, "-p", str(self.folder), "-c", str(self.folder / "nginx.conf")],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def stop(self):
        self.process.terminate()
        self.process.wait(10)

    def restart(self, site_conf: str) -> None:
        """Stop, then start with a new site. Unlike ``-s reload``, no old worker can still answer
        a new connection with the old rules afterwards (a reload hands over gracefully, so for a
        moment both generations accept connections, which made this test flaky)."""
        self.stop()
        (self.folder / "site.conf").write_text(site_conf)
        self.process = self._start()


@pytest.fixture(scope="module")
def proxied(tmp_path_factory):
    if NGINX is None:
        if os.environ.get("RADCASCADE_REQUIRE_NGINX") == "1":
            pytest.fail("nginx is required here (RADCASCADE_REQUIRE_NGINX=1) but not installed")
        pytest.skip("nginx not installed (Debian: apt-get install nginx-light)")
    tmp = tmp_path_factory.mktemp("proxy")
    studies = make_studies(tmp / "studies", labelled=1, unlabelled=1, seed=3)
    model_dir = tmp / "model"
    model_dir.mkdir()
    copy_weights(model_dir)
    server = start_server(studies, model_dir, tmp / "server.log")
    certs = tmp / "certs"
    certs.mkdir()
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(certs / "site.key"), "-out", str(certs / "site.crt")],
                   check=True, capture_output=True)
    hashed = subprocess.run(["openssl", "passwd", "-apr1", PASSWORD], check=True, capture_output=True,
                            text=True).stdout.strip()
    (certs / "htpasswd").write_text(f"{USER}:{hashed}\n")
    https_port, http_port = _free_port(), _free_port()
    upstream = server.url.split("://", 1)[1]

    def site(allow: tuple[str, ...]) -> str:
        return render_nginx_site(NginxSite(
            cert=str(certs / "site.crt"), key=str(certs / "site.key"), htpasswd=str(certs / "htpasswd"),
            upstream=upstream, listen=f"127.0.0.1:{https_port}", http_listen=f"127.0.0.1:{http_port}",
            server_name="127.0.0.1", allow=allow))

    nginx = Nginx(tmp / "nginx", site(allow=("10.99.0.0/16",)))  # this test machine is NOT allowed
    try:
        _wait_for_port(https_port)
        yield {"url": f"https://127.0.0.1:{https_port}", "http": f"http://127.0.0.1:{http_port}",
               "ca": str(certs / "site.crt"), "studies": studies, "server": server, "site": site, "tmp": tmp,
               "nginx": nginx}
    finally:
        nginx.stop()
        stop_server(server)


def _basic(user: str, password: str) -> dict:
    return {"token_type": "Basic", "access_token": base64.b64encode(f"{user}:{password}".encode()).decode()}


def test_strangers_are_refused(proxied):
    url, ca = proxied["url"], proxied["ca"]
    assert requests.get(f"{url}/info/", verify=ca, timeout=30).status_code == 401
    assert requests.get(f"{url}/info/", verify=ca, auth=(USER, "wrong"), timeout=30).status_code == 401
    image = proxied["studies"].unlabelled[0]
    assert requests.post(f"{url}/infer/cascade?image={image}", verify=ca, timeout=30).status_code == 401
    with pytest.raises(MONAILabelClientException):
        MONAILabelClient(url, tmpdir=str(proxied["tmp"] / "stranger")).info()
    # Plain HTTP only redirects to HTTPS, it never reaches the app.
    r = requests.get(f"{proxied['http']}/info/", allow_redirects=False, timeout=30)
    assert r.status_code == 301 and r.headers["Location"].startswith("https://")
    # The app itself listens on loopback only.
    assert proxied["server"].url.startswith("http://127.0.0.1:")


def test_client_with_password_does_the_whole_loop(proxied, monkeypatch, tmp_path):
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", proxied["ca"])  # label uploads go through `requests`
    client = MONAILabelClient(proxied["url"], tmpdir=str(tmp_path))
    client.update_auth(_basic(USER, PASSWORD))
    info = client.info()
    assert "cascade" in info["models"]
    sample = client.next_sample("random", {})
    assert sample["id"] in proxied["studies"].unlabelled
    path, result = client.infer("cascade", sample["id"], {})
    result = json.loads(result) if isinstance(result, (str, bytes)) else result
    predicted = sitk.GetArrayFromImage(sitk.ReadImage(path))
    assert predicted.shape[::-1] == proxied["studies"].studies[-1].image.shape
    assert (predicted == 1).any()
    client.save_label(sample["id"], path, tag="final")
    saved = proxied["studies"].folder / "labels" / "final" / f"{sample['id']}.nii.gz"
    assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(saved))), predicted)


def test_allowed_workstation_needs_no_password(proxied, tmp_path):
    """A Slicer workstation in ``allow`` connects without credentials (Slicer cannot send any)."""
    proxied["nginx"].restart(proxied["site"](allow=("127.0.0.1",)))
    _wait_for_port(int(proxied["url"].rsplit(":", 1)[1]))
    r = requests.get(f"{proxied['url']}/info/", verify=proxied["ca"], timeout=30)
    assert r.status_code == 200 and "cascade" in r.json()["models"]
    assert "cascade" in MONAILabelClient(proxied["url"], tmpdir=str(tmp_path)).info()["models"]


def test_site_generator_refuses_typos(capsys):
    with pytest.raises(ValueError):
        NginxSite(cert="/c", key="/k", htpasswd="/h", allow=("10.0.0.300/24",))
    with pytest.raises(ValueError):
        NginxSite(cert="/c; include /etc/passwd", key="/k", htpasswd="/h")
    assert deploy_main(["nginx", "--cert", "/c", "--key", "/k", "--htpasswd", "/h", "--allow", "10.1.2.0/24"]) == 0
    out = capsys.readouterr().out
    assert "allow 10.1.2.0/24;" in out and "satisfy any;" in out and "deny all;" in out
