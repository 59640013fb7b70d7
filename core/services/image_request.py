"""What a page asks a per-image job for: which images of which model, with which settings.

The same request gets the same job id, so :meth:`core.services.jobs.JobRegistry.start_or_get` follows a
running or finished job instead of computing it again. Subclasses name the job kind and the settings.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, ClassVar


@dataclass(frozen=True)
class ImageRequest:
    """A batch of images (by identity) for one model checkpoint; subclasses add the settings."""

    KIND: ClassVar[str] = "images"
    OWNER: ClassVar[str] = "model_id"  # the job-state key that names the model

    model_id: str
    mtime_ns: int  # the checkpoint's modification time: a retrained model is another request
    keys: tuple[str, ...]  # identity of each image: test-set path, or content hash of an upload
    labels: tuple[str, ...]  # short display names (not part of the identity)
    defects: tuple[str | None, ...]  # ground truth for test images, None for uploads (not part of the identity)

    def settings(self) -> Any:
        """What the result depends on besides the model and the images."""
        raise NotImplementedError

    @property
    def job_id(self) -> str:
        """Same model, images and settings -> same id."""
        ident = repr((self.model_id, self.mtime_ns, self.keys, self.settings()))
        return f"{self.KIND}-{hashlib.sha1(ident.encode()).hexdigest()[:12]}"

    def job_state(self) -> dict[str, Any]:
        """The job's initial state: the model id (under :attr:`OWNER`), labels and defects."""
        return {self.OWNER: self.model_id, "labels": list(self.labels), "defects": list(self.defects)}
