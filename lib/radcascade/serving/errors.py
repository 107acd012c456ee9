"""Turn the core's validation errors into clear 4xx HTTP answers (never a 500 with a stack trace)."""

from __future__ import annotations

import contextlib
import logging

from fastapi import HTTPException

from radcascade.checkpoints import CheckpointError
from radcascade.classifier import RadiomicsInputsMissing
from radcascade.labels import LabelContractError
from radcascade.saliency import SaliencyUnavailable
from radcascade.stages import StageUntrainedError
from radcascade.volumes import InvalidVolumeError

logger = logging.getLogger(__name__)


def client_error(status: int, message: str) -> HTTPException:
    logger.warning("refused request (%d): %s", status, message)
    return HTTPException(status_code=status, detail=message)


@contextlib.contextmanager
def as_http_errors(subject: str | None = None):
    """Map core exceptions raised inside the block to ``HTTPException``s.

    ``subject`` (e.g. "image 'study_001'") replaces the file name in volume errors, so an upload
    is named the way the user knows it, not by its temporary path.
    """
    try:
        yield
    except HTTPException:
        raise
    except InvalidVolumeError as e:
        message = f"{subject}: {e.reason}" if subject else str(e)
        too_large = getattr(e, "too_large", False) or "exceeds the limit" in e.reason
        raise client_error(413 if too_large else 422, message) from None
    except (LabelContractError, SaliencyUnavailable, RadiomicsInputsMissing) as e:
        raise client_error(422, str(e)) from None
    except (StageUntrainedError, CheckpointError) as e:
        raise client_error(503, f"{e}; train the stage first (POST /train/...)") from None
