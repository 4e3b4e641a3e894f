"""Published networks that metrics use, read from local files only (no network here): what to place where."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lsmia.errors import LsmiaError, printable


@dataclass(frozen=True)
class PublishedWeights:
    """A released weight file: the ``metrics`` key naming its local path, its file name and where it comes from."""

    key: str
    file: str
    url: str
    what: str

    def place(self) -> str:
        return f"place {self.what} {self.file} ({self.url}) there"

    def require(self, path: Path | str) -> Path:
        """``path`` if it is a file; else a one-line LsmiaError naming the file to place there."""
        if not Path(path).is_file():
            raise LsmiaError(
                f"metrics.{self.key} {printable(path)} does not exist: {self.place()}, or set metrics.{self.key} "
                "to null"
            )
        return Path(path)

    def wrong(self, path: Path | str) -> LsmiaError:
        """The error for a file that is not these weights (another network, a truncated download)."""
        return LsmiaError(f"metrics.{self.key} {printable(path)} does not hold {self.what}: {self.place()}")


FID_INCEPTION = PublishedWeights(
    key="fid_inception_path",
    file="pt_inception-2015-12-05-6726825d.pth",
    url="https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth",
    what="pytorch-fid's FID Inception weights",
)
FACENET = PublishedWeights(
    key="facenet_path",
    file="20180402-114759-vggface2.pt",
    url="https://github.com/timesler/facenet-pytorch/releases/download/v2.2.9/20180402-114759-vggface2.pt",
    what="facenet-pytorch's FaceNet VGGFace2 weights",
)
