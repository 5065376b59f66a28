"""The `track:` section: where runs are written and recorded."""

from __future__ import annotations

from pydantic import Field

from .base import SpecModel


class Aim(SpecModel):
    enabled: bool = Field(default=True, description="Record the run in an Aim repository (rank 0 only).")
    repo: str = Field(default="runs", description="Aim repository folder, relative to the working directory (aim up --repo runs).")
    experiment: str | None = Field(default=None, description="Aim experiment name; null uses the spec's name.")


class TensorBoard(SpecModel):
    dir: str = Field(default="runs/tensorboard",
                     description="Folder of TensorBoard event files, relative to the working directory; each run writes "
                                 "into <dir>/<run folder name>/ (tensorboard --logdir <dir>).")


class Track(SpecModel):
    runs_dir: str = Field(default="runs", description="Folder under which each run gets its directory <name>-<yyyymmdd-hhmmss>.")
    tags: list[str] = Field(default_factory=list, description="Free-form tags recorded with the run.")
    aim: Aim = Field(default_factory=Aim, description="Aim tracking.")
    tensorboard: TensorBoard | None = Field(default=None, description="TensorBoard event files with the same metrics "
                                            "as Aim (rank 0 only); null writes none.")
