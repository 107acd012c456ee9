"""A local Orthanc archive for trying the DICOM path, and the upload of NIfTI studies into it.

``python -m radcascade.orthanc --storage .orthanc --upload sample-data/abdomen`` starts Orthanc
(Debian packages ``orthanc`` and ``orthanc-dicomweb``) on 127.0.0.1 with its DICOMweb plugin,
converts each study into a CT series (and each submitted label into a DICOM SEG of that series)
and stores them, then keeps serving until interrupted.  ``make orthanc`` runs it; ``make serve
STUDIES=http://127.0.0.1:8042/dicom-web`` then serves the archive.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from radcascade.dicom_seg import label_to_seg
from radcascade.dicom_series import Patient, series_to_volume, volume_to_series
from radcascade.dicomweb import DicomWebArchive
from radcascade.labels import LabelContract
from radcascade.localserver import wait_until_answering

logger = logging.getLogger(__name__)
ORTHANC_BINARY = "Orthanc"
PLUGINS = "/usr/share/orthanc/plugins"
DEFAULT_HTTP_PORT = 8042
UID_ROOT = "2.25."  # UUID-derived UIDs: the same study gets the same UIDs on every upload


class OrthancNotInstalled(RuntimeError):
    """Orthanc or its DICOMweb plugin is missing."""


def find_orthanc() -> str:
    """The Orthanc binary, or a message saying how to install it."""
    binary = shutil.which(ORTHANC_BINARY) or ("/usr/sbin/Orthanc" if Path("/usr/sbin/Orthanc").exists() else None)
    if binary is None or not any(Path(PLUGINS).glob("libOrthancDicomWeb*")):
        raise OrthancNotInstalled("Orthanc with DICOMweb is not installed: apt-get install orthanc orthanc-dicomweb")
    return binary


@dataclass
class OrthancServer:
    """An Orthanc process on 127.0.0.1 with its storage in ``storage`` (kept across restarts)."""

    storage: Path
    http_port: int = DEFAULT_HTTP_PORT
    dicom_port: int = 0  # 0: the HTTP port + 1
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb_url(self) -> str:
        return f"{self.url}/dicom-web"

    def config(self) -> dict:
        return {
            "Name": "radcascade-archive", "HttpPort": self.http_port, "DicomPort": self.dicom_port or self.http_port + 1,
            "StorageDirectory": str(self.storage / "db"), "IndexDirectory": str(self.storage / "db"),
            "DicomAet": "RADCASCADE", "DicomCheckCalledAet": False,
            "RemoteAccessAllowed": False, "AuthenticationEnabled": False, "HttpServerEnabled": True,
            "DicomServerEnabled": True, "Plugins": [PLUGINS], "StableAge": 1,
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": True, "Ssl": False},
        }

    def start(self, timeout_s: float = 30.0) -> "OrthancServer":
        binary = find_orthanc()
        self.storage = self.storage.resolve()  # Orthanc runs in its storage folder
        self.storage.mkdir(parents=True, exist_ok=True)
        config = self.storage / "orthanc.json"
        config.write_text(json.dumps(self.config(), indent=2))
        log = open(self.storage / "orthanc.log", "ab")
        self.process = subprocess.Popen([binary, str(config)], stdout=log, stderr=subprocess.STDOUT,
                                        cwd=self.storage, start_new_session=True)
        if wait_until_answering(self.process, f"{self.dicomweb_url}/studies", timeout_s, 0.2, self.storage / "orthanc.log"):
            return self
        self.stop()
        raise RuntimeError(f"Orthanc did not answer within {timeout_s:.0f} s; see {self.storage / 'orthanc.log'}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def __enter__(self) -> "OrthancServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def stable_uid(*parts: str) -> str:
    """A DICOM UID derived from names (the same study uploads with the same UIDs)."""
    return UID_ROOT + str(int(hashlib.sha256("/".join(parts).encode()).hexdigest()[:30], 16))


def upload_study(archive: DicomWebArchive, image_path: Path, contract: LabelContract,
                 label_path: Path | None = None, patient_name: str | None = None) -> str:
    """Store a NIfTI/NRRD study as a CT series (and its label as a SEG); returns the series UID."""
    study_name = image_path.name.split(".")[0]
    image = sitk.ReadImage(str(image_path))
    patient = Patient(patient_id=study_name, patient_name=patient_name or f"Sample^{study_name}",
                      study_uid=stable_uid(study_name, "study"), study_description=f"radcascade sample {study_name}")
    instances = volume_to_series(image, patient, series_uid=stable_uid(study_name, "ct"),
                                 series_description=f"CT {study_name}")
    archive.store(instances)
    if label_path is not None and label_path.exists():
        series = series_to_volume(instances)
        label = sitk.Resample(sitk.ReadImage(str(label_path)), series.image, sitk.Transform(), sitk.sitkNearestNeighbor)
        values = sitk.GetArrayFromImage(label).astype(np.uint8)
        archive.store([label_to_seg(values, series, contract, automatic=False)])
    return instances[0].SeriesInstanceUID


def upload_studies(archive: DicomWebArchive, studies: Path, contract: LabelContract) -> list[str]:
    """Every image of a local studies folder (with ``labels/final`` as SEGs)."""
    uids = []
    for image_path in sorted(p for p in studies.iterdir() if p.name.endswith((".nii.gz", ".nii", ".nrrd"))):
        stem = image_path.name.split(".")[0]
        labels = list((studies / "labels" / "final").glob(f"{stem}.*"))
        uids.append(upload_study(archive, image_path, contract, labels[0] if labels else None))
        logger.info("stored %s as series %s%s", image_path.name, uids[-1], " with its label" if labels else "")
    return uids


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Start a local Orthanc (DICOMweb) and put studies into it.")
    parser.add_argument("--storage", type=Path, default=Path(".orthanc"), help="Orthanc's database folder (kept)")
    parser.add_argument("--port", type=int, default=DEFAULT_HTTP_PORT, help="HTTP port (DICOM: port + 1)")
    parser.add_argument("--upload", type=Path, help="a studies folder (NIfTI/NRRD, labels/final) to store as DICOM")
    parser.add_argument("--exit", action="store_true", help="stop Orthanc after the upload")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    server = OrthancServer(args.storage, args.port).start()
    signal.signal(signal.SIGTERM, _interrupt)  # `kill` stops Orthanc too, as Ctrl-C does
    try:
        archive = DicomWebArchive(server.dicomweb_url)
        if args.upload:
            uids = upload_studies(archive, args.upload, LabelContract())
            print(f"stored {len(uids)} studies from {args.upload}")
        print(f"Orthanc: {server.url}  DICOMweb: {server.dicomweb_url}")
        print(f"serve it: make serve STUDIES={server.dicomweb_url}")
        if not args.exit:
            print("Ctrl-C stops Orthanc (its database stays in", args.storage, ")")
            while server.process.poll() is None:
                time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()


if __name__ == "__main__":
    main()
