"""A DICOMweb archive (QIDO-RS / WADO-RS / STOW-RS) as radcascade uses it, through dicomweb-client.

Only what the app needs: list CT series and SEG instances, fetch a series or an instance, store
instances.  Every network failure becomes :class:`ArchiveError` with the archive's own message.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Sequence

import pydicom
import requests
from pydicom.errors import InvalidDicomError
from dicomweb_client.api import DICOMwebClient

logger = logging.getLogger(__name__)

STUDY_UID, SERIES_UID, SOP_UID, MODALITY = "0020000D", "0020000E", "00080018", "00080060"
SERIES_DESCRIPTION, SERIES_DATE, SERIES_TIME = "0008103E", "00080021", "00080031"
DEFAULT_TIMEOUT_S = 60.0


class ArchiveError(RuntimeError):
    """The archive did not answer, or refused a request."""


@dataclass(frozen=True)
class SeriesRef:
    """A series in the archive (from a QIDO-RS answer)."""

    study_uid: str
    series_uid: str
    modality: str
    description: str = ""
    date: str = ""
    time: str = ""


def _value(item: dict, tag: str, default: str = "") -> str:
    values = (item.get(tag) or {}).get("Value") or []
    return str(values[0]) if values else default


class DicomWebArchive:
    """A DICOMweb service root, e.g. ``http://127.0.0.1:8042/dicom-web``."""

    def __init__(self, url: str, timeout_s: float = DEFAULT_TIMEOUT_S, session: requests.Session | None = None):
        self.url = url.rstrip("/")
        session = session or requests.Session()
        session.request = _with_timeout(session.request, timeout_s)
        self.client = DICOMwebClient(url=self.url, session=session)
        # A busy archive (429/503/504) gets 3 tries over ~1 s, not the client's default 5 over ~30 s:
        # a Submit waits on this, and a refused store writes nothing, so the user can simply retry.
        self.client.set_http_retry_params(retry=True, max_attempts=3, wait_exponential_multiplier=250)

    def _call(self, what: str, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except requests.RequestException as e:
            raise ArchiveError(f"DICOMweb archive {self.url}: {what} failed: {e}") from e
        except InvalidDicomError as e:
            raise ArchiveError(f"DICOMweb archive {self.url}: {what} failed: a corrupt instance ({e})") from e
        except (ValueError, OSError, KeyError, AttributeError) as e:
            raise ArchiveError(f"DICOMweb archive {self.url}: {what} failed: {e}") from e

    def series(self, modality: str) -> list[SeriesRef]:
        """Every series of one modality (QIDO-RS, paged)."""
        out, offset = [], 0
        while True:
            page = self._call(f"searching {modality} series", self.client.search_for_series,
                              search_filters={"Modality": modality}, offset=offset, limit=500,
                              fields=[SERIES_DESCRIPTION, SERIES_DATE, SERIES_TIME]) or []
            for item in page:
                out.append(SeriesRef(_value(item, STUDY_UID), _value(item, SERIES_UID), _value(item, MODALITY, modality),
                                     _value(item, SERIES_DESCRIPTION), _value(item, SERIES_DATE), _value(item, SERIES_TIME)))
            if len(page) < 500:
                return out
            offset += len(page)

    def retrieve_series(self, ref: SeriesRef) -> list[pydicom.Dataset]:
        """All instances of a series (WADO-RS)."""
        return self._call(f"retrieving series {ref.series_uid}", self.client.retrieve_series,
                          study_instance_uid=ref.study_uid, series_instance_uid=ref.series_uid)

    def store(self, datasets: Sequence[pydicom.Dataset]) -> None:
        """Store instances (STOW-RS); raises unless the archive accepted every one."""
        for ds in datasets:  # Part 10 files (preamble and "DICM"), which is what the archive hands back
            if getattr(ds, "preamble", None) is None:
                ds.preamble = b"\x00" * 128
        answer = self._call("storing instances", self.client.store_instances, datasets=list(datasets))
        failed = getattr(answer, "FailedSOPSequence", None)
        if failed:
            raise ArchiveError(f"DICOMweb archive {self.url} refused {len(failed)} of {len(datasets)} instances")

    def instance_count(self) -> int:
        """How many instances the archive holds (for tests that check nothing was written)."""
        total = 0
        for item in self._call("listing studies", self.client.search_for_studies, fields=["00201208"]) or []:
            total += int(_value(item, "00201208", "0") or 0)
        return total


def _with_timeout(request, timeout_s: float):
    def call(method, url, **kwargs):
        kwargs.setdefault("timeout", timeout_s)
        return request(method, url, **kwargs)
    return call

