"""The `data:` section: sources, filters, tokenizer, packing, validation split, curriculum."""

from __future__ import annotations

import math
import re
from typing import Annotated, Any, ClassVar, Literal, Union

from pydantic import Field, field_validator, model_validator

from .base import SpecModel, field_error
from .chat import ChatFormat, Records
from .quantities import Fraction, PositiveTokenCount, TokenCount

SOURCE_NAME = r"^[A-Za-z_][A-Za-z0-9_.-]*$"

# ---------------------------------------------------------------- tokenizers


class _SpecialTokens(SpecModel):
    eos_token: str = Field(default="<|endoftext|>", description="Token appended after every document (the document separator when packing).")
    pad_token: str = Field(default="<|pad|>", description="Token used to pad where padding is unavoidable (samples, evaluation).")


class _TrainedTokenizer(_SpecialTokens):
    vocab_size: int = Field(gt=256, le=2**32, description="Vocabulary size to train, special tokens included (token ids are stored as 32-bit numbers: at most 2**32).")
    train_on: list[str] | None = Field(
        default=None, description="Names of the sources to train on; null means all sources."
    )
    max_chars: PositiveTokenCount = Field(
        default=10 * 2**20,
        description="Characters of a deterministic sample of the sources used for training (k = 1024).",
    )
    min_frequency: int = Field(default=2, ge=1, description="Merges or pieces seen fewer times than this are not learned.")


class BPETokenizer(_TrainedTokenizer):
    kind: Literal["bpe"] = Field(description="Byte-level BPE trained with Hugging Face tokenizers (GPT-2 style).")


class UnigramTokenizer(_TrainedTokenizer):
    kind: Literal["unigram"] = Field(description="SentencePiece-style unigram model trained with Hugging Face tokenizers.")


class FileTokenizer(_SpecialTokens):
    kind: Literal["file"] = Field(description="A tokenizer.json file (Hugging Face tokenizers format).")
    path: str = Field(min_length=1, description="Path to tokenizer.json, relative to the spec file.")


class HubTokenizer(_SpecialTokens):
    kind: Literal["hub"] = Field(description="A tokenizer from the Hugging Face hub by name (needs the network).")
    name: str = Field(min_length=1, description="Repository name, e.g. gpt2.")
    revision: str | None = Field(default=None, description="Branch, tag or commit; null means the default branch.")


class TiktokenTokenizer(_SpecialTokens):
    kind: Literal["tiktoken"] = Field(
        description="An OpenAI tiktoken encoding, converted to a byte-level BPE with the same ids. tabula downloads no "
                    "encoding file: give a local copy in `path`, or have it in tiktoken's cache ($TIKTOKEN_CACHE_DIR)."
    )
    encoding: str = Field(min_length=1, description="Encoding name, e.g. cl100k_base (100277 tokens) or o200k_base.")
    path: str | None = Field(
        default=None,
        min_length=1,
        description="A local copy of the encoding's file (e.g. cl100k_base.tiktoken from "
                    "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken), relative to the spec file; "
                    "checked against tiktoken's published SHA-256. Null: tiktoken's cache must hold it.",
    )


Tokenizer = Annotated[
    Union[BPETokenizer, UnigramTokenizer, FileTokenizer, HubTokenizer, TiktokenTokenizer], Field(discriminator="kind")
]

# ---------------------------------------------------------------- sources


# A files (jsonl, parquet) or hub source can stream instead of being cached; the field is left out of the
# canonical form (and the spec hash) while true, so older specs keep their hash.
_CACHE_DESCRIPTION = ("true: documents are read, filtered and tokenized once into the token cache before training; false (files: "
                      "jsonl and parquet only): they are read, filtered, tokenized and packed on the fly during training instead "
                      "(streamed, for corpora too large to cache), by worker processes sharded by rank (data.stream_workers); a "
                      "streamed source holds no validation split.")


class FilesSource(SpecModel):
    kind: Literal["files"] = Field(description="Local files matched by glob patterns.")
    paths: list[str] = Field(min_length=1, description="Glob patterns relative to the spec file; ** matches directories recursively.")
    format: Literal["text", "jsonl", "parquet"] = Field(
        default="text", description="text: each file is one document; jsonl and parquet: one document per record."
    )
    text_field: str = Field(default="text", description="The record field holding the text (jsonl and parquet, without records).")
    records: Records | None = Field(
        default=None,
        description="jsonl and parquet: records are conversations (kind: chat) or instructions with responses (kind: instruction), "
                    "trained on the assistant's tokens only (see data.chat); null: each record's text_field is a document.",
    )
    on_error: Literal["fail", "skip"] = Field(
        default="fail",
        description="What to do with an unreadable file or malformed record: fail the run naming its file and line, or skip it "
                    "(tabula prepare reports how many, and the first reasons with their file and line).",
    )
    cache: bool = Field(default=True, description=_CACHE_DESCRIPTION)

    canonical_optional: ClassVar[frozenset[str]] = frozenset({"cache"})

    @model_validator(mode="after")
    def _records_need_records(self) -> FilesSource:
        if self.records is not None:
            if self.format == "text":
                raise field_error("records", f"{self.records.kind} records are read from format: jsonl or parquet, not text")
            if self.text_field != "text":  # not model_fields_set: resolved specs write every default out
                raise field_error("text_field", f"text_field names the text of plain records; {self.records.kind} records name their fields in records")
        if not self.cache:
            if self.format == "text":
                raise field_error("cache", "cache: false streams records of format: jsonl or parquet; format: text files are cached")
            if self.records is not None:
                raise field_error("cache", f"cache: false streams plain text records; {self.records.kind} records are cached (set cache: true)")
        return self


class HubSource(SpecModel):
    kind: Literal["hub"] = Field(description="A Hugging Face hub dataset, streamed (needs the network).")
    name: str = Field(min_length=1, description="Dataset name, e.g. HuggingFaceFW/fineweb-edu.")
    config: str | None = Field(default=None, description="Dataset configuration (subset) name.")
    split: str = Field(default="train", description="Split to read.")
    text_field: str = Field(default="text", description="The record field holding the text.")
    revision: str | None = Field(default=None, description="Branch, tag or commit; null means the default branch.")
    max_documents: int | None = Field(default=None, gt=0, description="Stop after this many documents; null reads the whole split.")
    cache: bool = Field(default=True, description=_CACHE_DESCRIPTION)

    canonical_optional: ClassVar[frozenset[str]] = frozenset({"cache"})


class PythonStdlibSource(SpecModel):
    kind: Literal["python_stdlib"] = Field(
        description="The source files and docstrings of the Python installation running tabula: real text on every machine."
    )
    include: list[Literal["source", "docstrings"]] = Field(
        default_factory=lambda: ["source", "docstrings"],  # type: ignore[arg-type]  # list of str literals, inferred as list[str]
        min_length=1,
        description="source: each .py file is a document; docstrings: each module's docstrings form a document.",
    )
    max_files: int | None = Field(default=None, gt=0, description="Use at most this many files (sorted by path); null uses all.")


class ImageTextSource(SpecModel):
    kind: Literal["image_text"] = Field(
        description="Images with captions, for a model with model.vision: each becomes the image's tokens, then its caption "
                    "(trained on the caption only). Images are decoded and resized to the encoder's image_size when the data is prepared.")
    paths: list[str] = Field(min_length=1, description="Glob patterns relative to the spec file: folders (folder), .tar files (webdataset) or .jsonl files (jsonl).")
    format: Literal["folder", "webdataset", "jsonl"] = Field(
        default="folder",
        description="folder: each image file (png, jpg, ...) with its caption in a .txt file of the same stem; webdataset: tar "
                    "files whose members share a stem (key.png with key.txt); jsonl: one record per line naming the image "
                    "(relative to the jsonl file) and its caption.")
    image_field: str = Field(default="image", description="jsonl: the record field holding the image's path.")
    caption_field: str = Field(default="caption", description="jsonl: the record field holding the caption.")
    on_error: Literal["fail", "skip"] = Field(
        default="fail", description="An unreadable image or a record without a caption: fail naming it, or skip it (reported by tabula prepare).")


Source = Annotated[Union[FilesSource, HubSource, PythonStdlibSource, ImageTextSource], Field(discriminator="kind")]

# ---------------------------------------------------------------- filters


class LengthFilter(SpecModel):
    kind: Literal["length"] = Field(description="Keep documents whose length in characters is within bounds.")
    min_chars: int = Field(default=0, ge=0, description="Drop documents shorter than this.")
    max_chars: int | None = Field(default=None, gt=0, description="Drop documents longer than this; null means no limit.")

    @model_validator(mode="after")
    def _bounds(self) -> LengthFilter:
        if self.max_chars is not None and self.max_chars < self.min_chars:
            raise field_error("max_chars", f"max_chars ({self.max_chars}) is below min_chars ({self.min_chars})")
        return self


class DedupFilter(SpecModel):
    kind: Literal["dedup"] = Field(description="Drop duplicate documents.")
    method: Literal["exact", "minhash"] = Field(
        default="exact", description="exact: identical content hash; minhash: near-duplicates by estimated Jaccard similarity."
    )
    threshold: float = Field(default=0.8, gt=0.0, le=1.0, description="minhash: similarity above which documents are duplicates.")
    num_perm: int = Field(default=128, ge=16, le=4096, description="minhash: number of hash permutations, 16 to 4096 (more is more exact, slower).")


class RegexFilter(SpecModel):
    kind: Literal["regex"] = Field(description="Keep or drop documents that match a regular expression.")
    pattern: str = Field(min_length=1, description="A Python regular expression searched in each document.")
    action: Literal["keep", "drop"] = Field(default="drop", description="keep: only matching documents stay; drop: matching documents go.")

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, pattern: str) -> str:
        try:
            re.compile(pattern)
        except re.error as error:
            raise ValueError(f"not a valid regular expression: {error}") from None
        except (RecursionError, OverflowError) as error:  # thousands of nested groups, a{99999999999}
            raise ValueError(f"not a regular expression Python can compile: {error}") from None
        return pattern


class QualityFilter(SpecModel):
    kind: Literal["quality"] = Field(description="Heuristics of web-corpus pipelines (Gopher, C4) that drop low-quality text.")
    min_alpha_fraction: float = Field(default=0.6, ge=0.0, le=1.0, description="Drop documents with fewer alphabetic characters than this fraction (non-space characters).")
    max_repeated_line_fraction: float = Field(default=0.3, ge=0.0, le=1.0, description="Drop documents in which more than this fraction of lines are repeats.")
    min_mean_word_length: float = Field(default=3.0, ge=0.0, description="Drop documents whose mean word length is below this.")
    max_mean_word_length: float = Field(default=10.0, gt=0.0, description="Drop documents whose mean word length is above this.")

    @model_validator(mode="after")
    def _bounds(self) -> QualityFilter:
        if self.max_mean_word_length < self.min_mean_word_length:
            raise field_error("max_mean_word_length", f"max_mean_word_length ({self.max_mean_word_length:g}) is below "
                                                      f"min_mean_word_length ({self.min_mean_word_length:g}): every document would be dropped")
        return self


Filter = Annotated[Union[LengthFilter, DedupFilter, RegexFilter, QualityFilter], Field(discriminator="kind")]

# ---------------------------------------------------------------- packing, validation, curriculum


class Packing(SpecModel):
    document_masking: bool = Field(
        default=False,
        description="Stop attention from crossing document boundaries inside a packed window (slower attention); "
                    "required with chat or instruction records, so packed conversations do not see each other.",
    )


class Validation(SpecModel):
    fraction: Fraction = Field(default=0.01, description="Share of each source's documents held out for evaluation (0.01 or 1%).")
    max_documents: int | None = Field(default=None, gt=0, description="Hold out at most this many documents per source.")


class Stage(SpecModel):
    until_tokens: PositiveTokenCount | None = Field(
        default=None,
        description="The stage lasts until this many training tokens have been seen in total; null (last stage only) lasts until the budget is spent.",
    )
    seq_len: int | None = Field(default=None, gt=0, description="Sequence length of this stage; null carries over the previous stage's (the first defaults to model.max_seq_len).")
    mix: dict[str, float] | None = Field(
        default=None, description="Sampling weights by source name (normalised); null carries over the previous stage's (the first defaults to equal weights)."
    )

    @field_validator("mix", mode="before")
    @classmethod
    def _weights_not_booleans(cls, mix: Any) -> Any:
        # the sections' own check sees fields, not the values of a mapping: `stdlib: true` read as 1.0
        for name, weight in mix.items() if isinstance(mix, dict) else ():
            if isinstance(weight, bool):
                raise field_error((name,), f"expected a number, found {str(weight).lower()}")
        return mix

    @field_validator("mix")
    @classmethod
    def _positive(cls, mix: dict[str, float] | None) -> dict[str, float] | None:
        if mix is not None:
            if not mix:
                raise ValueError("a mixture names at least one source")
            for name, weight in mix.items():
                if not weight > 0:
                    raise field_error((name,), f"mixture weights must be positive, {name!r} has {weight:g}")
            if not math.isfinite(sum(mix.values())):  # normalising divides by the sum
                largest = max(mix, key=mix.__getitem__)
                raise field_error((largest,), f"mixture weights add up to more than a number can hold ({mix[largest]:g} is too large)")
        return mix


# ---------------------------------------------------------------- transforms (augmentation)


class _Transform(SpecModel):
    rate: Fraction = Field(default=0.5, description="Share of the training documents this transform changes (drawn per document from the seed).")
    sources: list[str] | None = Field(default=None, description="Names of the sources it applies to; null means all (validation documents never change).")


class FimTransform(_Transform):
    kind: Literal["fim"] = Field(
        description="Fill-in-the-middle (Bavarian et al. 2022): a document cut at two random characters into prefix, middle and "
                    "suffix is written as prefix, suffix then middle with sentinel tokens, so the model learns to infill."
    )
    spm_rate: Fraction = Field(
        default=0.5,
        description="Share of the transformed documents in SPM form (<pre><suf>suffix<mid>prefix middle); the rest in PSM form "
                    "(<pre>prefix<suf>suffix<mid>middle).",
    )
    prefix_token: str = Field(default="<|fim_prefix|>", min_length=1, description="The prefix sentinel, added to the tokenizer as a special token.")
    suffix_token: str = Field(default="<|fim_suffix|>", min_length=1, description="The suffix sentinel, added to the tokenizer as a special token.")
    middle_token: str = Field(default="<|fim_middle|>", min_length=1, description="The middle sentinel, added to the tokenizer as a special token.")

    @model_validator(mode="after")
    def _distinct(self) -> FimTransform:
        if len({self.prefix_token, self.suffix_token, self.middle_token}) < 3:
            raise field_error("middle_token", "prefix_token, suffix_token and middle_token must be three different tokens")
        return self


class SpanCorruptionTransform(_Transform):
    kind: Literal["span_corruption"] = Field(
        description="T5-style span corruption as an auxiliary objective: spans of words are replaced by sentinels "
                    "<|span_0|>, <|span_1|> ..., and the document is followed by the separator and each sentinel with its span."
    )
    noise_density: float = Field(default=0.15, gt=0.0, lt=1.0, description="Share of the document's words inside corrupted spans.")
    mean_span_words: float = Field(default=3.0, ge=1.0, description="Mean length of a corrupted span in words.")
    max_spans: int = Field(default=32, ge=1, le=1000, description="At most this many spans a document (and sentinel tokens added to the tokenizer).")
    separator_token: str = Field(default="<|targets|>", min_length=1, description="Token between the corrupted document and its spans (a special token).")


class NoiseTransform(_Transform):
    kind: Literal["noise"] = Field(
        description="Noise for robustness, on the words (whitespace-separated pieces) of a document: dropout, replacement by "
                    "another word of the same document, whitespace noise and case flips, each at its rate."
    )
    word_dropout: Fraction = Field(default=0.0, description="Share of words removed.")
    word_replacement: Fraction = Field(default=0.0, description="Share of words replaced by a word drawn from the same document.")
    whitespace: Fraction = Field(default=0.0, description="Share of the gaps between words that are doubled or removed.")
    case: Fraction = Field(default=0.0, description="Share of words whose case is flipped (lower to upper and back).")

    @model_validator(mode="after")
    def _some_noise(self) -> NoiseTransform:
        if not any((self.word_dropout, self.word_replacement, self.whitespace, self.case)):
            raise field_error("word_dropout", "a noise transform needs at least one of word_dropout, word_replacement, whitespace, case above 0")
        return self


Transform = Annotated[Union[FimTransform, SpanCorruptionTransform, NoiseTransform], Field(discriminator="kind")]


class TemperatureMixture(SpecModel):
    kind: Literal["temperature"] = Field(
        description="Weights by temperature over source sizes, as multilingual models sample languages: weight_i is "
                    "proportional to stage_weight_i * tokens_i ** (1 / mix_temperature) (1: by size; large: towards equal)."
    )
    mix_temperature: float = Field(gt=0.0, le=1000.0, description="The temperature T (0 < T <= 1000); 1 samples by size, above 1 flattens.")


class UniMaxMixture(SpecModel):
    kind: Literal["unimax"] = Field(
        description="UniMax (Chung et al. 2023): each stage's tokens spread as evenly as possible over its sources, no source "
                    "repeated more than max_epochs times; what a capped source cannot take goes to the others."
    )
    max_epochs: float = Field(gt=0.0, description="The most epochs of any one source's training tokens within a stage.")


class OnlineMixture(SpecModel):
    kind: Literal["online"] = Field(
        description="Reweights sources from their recent training loss (DoReMi-style): every every_tokens, each source's weight "
                    "is multiplied by exp(step_size * excess loss), where excess is its loss minus its reference loss (or the "
                    "loss itself without one), then smoothed towards equal and kept within [min_weight, max_weight]. "
                    "Starts from the stages' mix."
    )
    every_tokens: PositiveTokenCount = Field(description="Training tokens between two updates of the weights.")
    step_size: float = Field(default=1.0, gt=0.0, le=100.0, description="How far one update moves the log-weights per unit of excess loss.")
    smoothing: Fraction = Field(default=0.1, description="Share of the equal mixture blended into the weights after an update (DoReMi's c).")
    min_weight: Fraction = Field(default=0.0, description="No source's weight falls below this (of the total).")
    max_weight: Fraction = Field(default=1.0, description="No source's weight rises above this (of the total).")
    reference_loss: dict[str, float] | None = Field(
        default=None, description="Loss of a reference run by source name (DoReMi's reference model); null: the excess is the loss itself."
    )

    @model_validator(mode="after")
    def _bounds(self) -> OnlineMixture:
        if self.max_weight < self.min_weight:
            raise field_error("max_weight", f"max_weight ({self.max_weight:g}) is below min_weight ({self.min_weight:g})")
        if self.max_weight == 0:
            raise field_error("max_weight", "max_weight 0 leaves no source to sample")
        return self


Mixture = Annotated[Union[TemperatureMixture, UniMaxMixture, OnlineMixture], Field(discriminator="kind")]


class Data(SpecModel):
    tokenizer: Tokenizer = Field(description="How text becomes tokens.")
    sources: dict[Annotated[str, Field(pattern=SOURCE_NAME)], Source] = Field(
        min_length=1, description="Named sources; the names are used by mixtures and the tokenizer's train_on."
    )
    filters: list[Filter] = Field(default_factory=list, description="Applied in order to every source's documents.")
    packing: Packing = Field(default_factory=Packing, description="How documents are joined into training windows.")
    validation: Validation = Field(default_factory=Validation, description="The held-out split used for evaluation.")
    curriculum: list[Stage] = Field(
        default_factory=lambda: [Stage()],
        min_length=1,
        description="Stages by token boundary, each with its sequence length and mixture; the last lasts until the budget is spent.",
    )
    chat: ChatFormat = Field(
        default_factory=ChatFormat, description="How sources with chat or instruction records become tokens: template, maximum length, truncation."
    )
    workers: int | None = Field(default=None, ge=1, le=1024, description="Tokenizer worker processes (at most 1024); null uses the CPU count.")
    transforms: list[Transform] = Field(
        default_factory=list,
        description="Augmentations of the training documents, in order (fill-in-the-middle, span corruption, noise), each "
                    "deterministic per document and seed; applied after the filters and the validation split, to training "
                    "documents of plain text only.",
    )
    stream_workers: int = Field(
        default=1, ge=1, le=64,
        description="Worker processes each rank runs for each streamed source (cache: false), each reading its own shard (at most 64).",
    )
    mixture: Mixture | None = Field(
        default=None,
        description="How sampling weights are set beyond each stage's mix: by temperature over source sizes, UniMax, or online "
                    "from the training loss; null: the stages' mix as written.",
    )

    # Fields left out of the canonical form (and so of the spec hash) while they hold their default:
    # specs written before they existed keep their hash.
    canonical_optional: ClassVar[frozenset[str]] = frozenset({"mixture", "transforms", "stream_workers"})

    @property
    def streamed_sources(self) -> list[str]:
        """Names of the sources read on the fly during training (cache: false) instead of from the token cache."""
        return [name for name, source in self.sources.items() if not getattr(source, "cache", True)]

    @property
    def image_sources(self) -> list[str]:
        """Names of the image-text sources (they need model.vision)."""
        return [name for name, source in self.sources.items() if isinstance(source, ImageTextSource)]

    @property
    def supervised_sources(self) -> list[str]:
        """Names of the sources whose records are conversations (trained on the assistant's tokens only)."""
        return [name for name, source in self.sources.items() if getattr(source, "records", None) is not None]

    @model_validator(mode="after")
    def _names_exist(self) -> Data:
        names = set(self.sources)
        previous = 0
        for index, stage in enumerate(self.curriculum):
            if stage.until_tokens is None:
                if index != len(self.curriculum) - 1:
                    raise field_error(
                        ("curriculum", index, "until_tokens"),
                        "only the last curriculum stage may omit until_tokens (it then lasts until the budget is spent)",
                    )
            elif stage.until_tokens <= previous:
                raise field_error(
                    ("curriculum", index, "until_tokens"),
                    f"curriculum stages must be strictly increasing: stage {index} ends at {stage.until_tokens} tokens, not after stage {index - 1} ({previous})",
                )
            previous = stage.until_tokens or previous
            for name in stage.mix or {}:
                if name not in names:
                    raise field_error(
                        ("curriculum", index, "mix", name),
                        f"mixture names source {name!r}, which data.sources does not define (sources: {', '.join(sorted(names))})",
                        key=True,
                    )
        if isinstance(self.mixture, OnlineMixture):
            for name in self.mixture.reference_loss or {}:
                if name not in names:
                    raise field_error(("mixture", "reference_loss", name), f"reference_loss names source {name!r}, which data.sources "
                                      f"does not define (sources: {', '.join(sorted(names))})", key=True)
            if self.mixture.min_weight * len(names) > 1:
                raise field_error(("mixture", "min_weight"), f"min_weight {self.mixture.min_weight:g} for each of {len(names)} sources "
                                  "adds up to more than the whole")
        for index, transform in enumerate(self.transforms):
            for position, name in enumerate(transform.sources or []):
                if name not in names:
                    raise field_error(("transforms", index, "sources", position), f"the transform names source {name!r}, which "
                                      f"data.sources does not define (sources: {', '.join(sorted(names))})")
        streamed = self.streamed_sources
        if streamed and isinstance(self.mixture, (TemperatureMixture, UniMaxMixture)):
            raise field_error(("mixture", "kind"), f"a {self.mixture.kind} mixture weighs sources by their size, and source "
                              f"{streamed[0]!r} streams (cache: false): its size is not known; give the stages' mix or an online mixture")
        supervised = self.supervised_sources
        if supervised and not self.packing.document_masking:
            source = self.sources[supervised[0]]
            assert isinstance(source, FilesSource) and source.records is not None  # what supervised_sources lists
            raise field_error(
                ("packing", "document_masking"),
                f"source {supervised[0]!r} holds {source.records.kind} records: set document_masking: true, "
                "so that conversations packed into one window do not attend to each other",
            )
        if self.chat.template == "tokenizer" and self.tokenizer.kind != "file":
            raise field_error(
                ("chat", "template"),
                f"template: tokenizer reads the chat_template beside a kind: file tokenizer.json, and the tokenizer is kind: "
                f"{self.tokenizer.kind}: name a template (chatml, llama-3) or use auto",
            )
        train_on = (self.tokenizer.train_on or []) if isinstance(self.tokenizer, _TrainedTokenizer) else []
        for index, name in enumerate(train_on):
            if name not in names:
                raise field_error(
                    ("tokenizer", "train_on", index),
                    f"train_on names source {name!r}, which data.sources does not define (sources: {', '.join(sorted(names))})",
                )
        return self
