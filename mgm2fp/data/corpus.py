"""Plain-prose corpora from folders of reStructuredText, Markdown or text files, and a BPE tokenizer.

The tiny-pydocs models (see ``docs/tiny-pydocs.md``) are built from this module. It turns the
reStructuredText sources of the Python documentation into paragraphs of English prose. It splits
documents into train, validation and held-out sets by a hash of their path, so the split depends
neither on the order of files nor on other documents. It trains a byte-level BPE tokenizer on the
train split and saves it in the Hugging Face format.

Output format: one paragraph per line, documents separated by one blank line.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from mgm2fp.errors import ConfigError, SourceNotFoundError
from mgm2fp.saving import atomic_directory, write_json

logger = logging.getLogger(__name__)

SPLIT_FILES = {"train": "train.txt", "validation": "validation.txt", "heldout": "heldout.txt"}
END_OF_TEXT = "<|endoftext|>"

# Directives whose body is prose. Admonitions may also carry prose on the directive line itself
# (".. note:: Text"). Version directives carry a version number there. Object descriptions carry a
# signature, which may continue on the following lines up to the first blank line.
ADMONITION_DIRECTIVES = frozenset(
    {"note", "warning", "seealso", "important", "tip", "caution", "attention", "hint", "danger", "error", "admonition", "impl-detail", "topic", "sidebar", "only", "container"}
)
VERSION_DIRECTIVES = frozenset({"versionadded", "versionchanged", "deprecated", "deprecated-removed"})
DESCRIPTION_DIRECTIVES = frozenset(
    {
        "function", "method", "class", "attribute", "data", "exception", "describe", "decorator", "decoratormethod",
        "classmethod", "staticmethod", "abstractmethod", "coroutinefunction", "coroutinemethod", "awaitablefunction",
        "awaitablemethod", "opcode", "cmdoption", "option", "envvar", "pdbcommand", "c:function", "c:macro", "c:type",
        "c:member", "c:var", "c:struct", "c:enum", "c:enumerator", "c:union", "c:data", "term", "glossary", "property",
    }
)  # fmt: skip

DIRECTIVE = re.compile(r"^\.\.\s+(?:\|[^|]+\|\s+)?([\w:-]+)::(.*)$")
DIRECTIVE_OPTION = re.compile(r"^:[\w-]+:(\s|$)")
FIELD = re.compile(r"^:([^:`\s][^:`]*):(\s|$)")
BULLET = re.compile(r"^([-*+\u2022]|#\.|\d+\.|\(?\d+\)|[a-zA-Z]\.|\(?[a-zA-Z]\))\s+")
ADORNMENT = re.compile(r"^([=\-`:'\"~^_*+#<>.])\1{2,}$")
SIMPLE_TABLE_BORDER = re.compile(r"^=+( +=+)+$|^-+( +-+)+$")
GRID_TABLE_LINE = re.compile(r"^[+|]")  # every line of a grid table starts with + or |

INLINE = re.compile(
    r"(?P<role>:(?:[\w-]+:)+`(?P<role_text>[^`]+)`)"
    r"|``(?P<literal>.+?)``"
    r"|`(?P<link>[^`]+?)`__?"
    r"|`(?P<interpreted>[^`]+)`"
    r"|\*\*(?P<strong>[^*]+?)\*\*"
    r"|(?<![\w*])\*(?P<emphasis>[^\s*][^*]*?)\*(?![\w*])"
    r"|\s?\[(?:#[\w-]*|\d+|\*|[A-Za-z][\w.-]*)\]_"
    r"|\|(?P<substitution>[^|\s][^|]*)\|_{0,2}"
    r"|(?<![\w`])(?P<reference>[A-Za-z][A-Za-z0-9]*)__?(?![\w])"
    r"|\\(?P<escaped>.)",
    re.DOTALL,
)
EXPLICIT_TARGET = re.compile(r"^(?P<text>.*?)\s*<[^<>]*>$", re.DOTALL)

MARKDOWN_FENCE = re.compile(r"^(```|~~~)")
MARKDOWN_INLINE = re.compile(r"!\[[^\]]*\]\([^)]*\)|\[(?P<link>[^\]]+)\]\([^)]*\)|`(?P<code>[^`]+)`|\*\*(?P<strong>[^*]+)\*\*|(?<![\w*])\*(?P<emphasis>[^\s*][^*]*?)\*(?![\w*])|<[^>]+>")


# reStructuredText ---------------------------------------------------------------------------------


def clean_inline_rst(text: str) -> str:
    """Replace inline reStructuredText markup by its visible text.

    Roles keep their title, so ``:ref:`text <label>``` becomes ``text`` and ``:func:`~a.b```
    becomes ``b``. Literals, emphasis and hyperlinks keep their text. Footnote references and
    substitutions are dropped. Backslash escapes keep the escaped character.
    """

    def replace(match: re.Match[str]) -> str:
        groups = match.groupdict()
        if groups["role"] is not None:
            return _role_title(groups["role_text"])
        for name in ("literal", "interpreted", "strong", "emphasis", "reference"):
            if groups[name] is not None:
                return groups[name]
        if groups["link"] is not None:
            explicit = EXPLICIT_TARGET.match(groups["link"])
            return explicit.group("text") if explicit and explicit.group("text") else groups["link"]
        if groups["escaped"] is not None:
            return "" if groups["escaped"].isspace() else groups["escaped"]
        return ""  # footnote reference or substitution

    return _collapse_spaces(INLINE.sub(replace, text))


def _role_title(content: str) -> str:
    explicit = EXPLICIT_TARGET.match(content)
    if explicit and explicit.group("text"):
        return explicit.group("text")
    content = content.lstrip("!")
    if content.startswith("~"):
        return content[1:].rsplit(".", 1)[-1]
    return content


def _collapse_spaces(text: str) -> str:
    text = re.sub(r"\s+", " ", text).strip()
    return re.sub(r"\s+([,.;:!?)])(?=\s|$)", r"\1", text).replace("( ", "(")


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


class _RstParagraphs:
    """Line-by-line parser state of :func:`clean_rst`, with the paragraph being read and what to skip."""

    def __init__(self) -> None:
        self.paragraphs: list[str] = []
        self.lines: list[str] = []
        self.indent = 0  # indentation of the text of the current paragraph
        self.skip_deeper_than: int | None = None  # skip blank lines and lines indented more than this
        self.skip_until_blank = False  # skip the rest of a directive's argument and option lines
        self.skip_options = False  # skip ":option:" lines right after a directive line
        self.table_border: str | None = None  # inside a simple table until its closing border
        self.in_grid_table = False  # inside a grid table until a line that starts with neither + nor |

    def start(self, text: str, indent: int) -> None:
        self.flush()
        self.lines, self.indent = [text], indent

    def flush(self) -> None:
        lines, self.lines = self.lines, []
        if not lines or lines[0].lstrip().startswith(">>>"):
            return
        if lines[-1].endswith("::"):
            # "Text::" announces a literal block: keep "Text:", drop the block (done by the caller).
            last = lines[-1][:-2].rstrip()
            lines[-1] = last + ":" if last and not lines[-1][:-2].endswith(" ") else last
        self.paragraphs.append(" ".join(line.strip() for line in lines))


def _read_rst_line(state: _RstParagraphs, line: str, next_line: str) -> None:
    stripped = line.strip()
    indent = _indent(line)

    if state.table_border is not None:
        if SIMPLE_TABLE_BORDER.match(stripped) and not next_line.strip():
            state.table_border = None
        return
    if state.skip_deeper_than is not None:
        if not stripped or indent > state.skip_deeper_than:
            return
        state.skip_deeper_than = None
    if state.skip_until_blank:
        if stripped and indent > 0:
            return
        state.skip_until_blank = False
    if not stripped:
        state.skip_options = False
        state.flush()
        return
    if state.skip_options and DIRECTIVE_OPTION.match(stripped):
        return
    state.skip_options = False

    if SIMPLE_TABLE_BORDER.match(stripped):
        state.flush()
        state.table_border = stripped
        return
    if ADORNMENT.match(stripped):
        # Section underline (drops the title read just before), overline or transition.
        if len(state.lines) > 1:
            state.flush()
        state.lines = []
        return
    if state.in_grid_table and GRID_TABLE_LINE.match(stripped):
        return
    state.in_grid_table = False
    if stripped.startswith(("+-", "+=")):
        state.flush()
        state.in_grid_table = True
        return
    if stripped.startswith(".."):
        _read_explicit_markup(state, stripped, indent)
        return
    if FIELD.match(stripped):
        state.flush()
        state.skip_deeper_than = indent
        return

    bullet = BULLET.match(stripped)
    if bullet and (not state.lines or indent <= state.indent):
        state.start(stripped[bullet.end() :], indent + bullet.end())
    elif state.lines and indent != state.indent and not (bullet is None and indent > state.indent and len(state.lines) > 1):
        # A change of indentation starts a new paragraph (a definition after its term, a block quote).
        state.start(stripped, indent)
    elif state.lines:
        state.lines.append(stripped)
    else:
        state.start(stripped, indent)

    if stripped.endswith("::"):
        paragraph_indent = state.indent
        state.flush()
        state.skip_deeper_than = min(paragraph_indent, indent)


def _read_explicit_markup(state: _RstParagraphs, stripped: str, indent: int) -> None:
    """Handle a line starting with ``..``: a directive, comment, link target or footnote."""
    state.flush()
    directive = DIRECTIVE.match(stripped)
    name = directive.group(1).lower() if directive else ""
    if name in ADMONITION_DIRECTIVES:
        argument = directive.group(2).strip()
        if argument and name not in ("only", "container"):
            state.start(argument, indent + 3)
        state.skip_options = True
    elif name in VERSION_DIRECTIVES:
        state.skip_options = True
    elif name in DESCRIPTION_DIRECTIVES:
        state.skip_until_blank = True
    else:
        state.skip_deeper_than = indent


def clean_rst(text: str, *, min_words: int = 4) -> list[str]:
    """Extract the prose paragraphs of a reStructuredText document.

    Section titles, code and literal blocks, doctest blocks, tables, comments, link targets,
    footnotes and field lists are dropped. Directives are dropped too, except admonitions,
    version notes and object descriptions, whose prose bodies are kept. Inline markup is replaced
    by its text (see :func:`clean_inline_rst`). Returns one string per paragraph.
    """
    state = _RstParagraphs()
    lines = text.expandtabs(8).splitlines()
    for index, line in enumerate(lines):
        next_line = lines[index + 1] if index + 1 < len(lines) else ""
        _read_rst_line(state, line.rstrip(), next_line)
    state.flush()
    cleaned = (clean_inline_rst(paragraph) for paragraph in state.paragraphs)
    return [paragraph for paragraph in cleaned if is_prose(paragraph, min_words=min_words)]


# Markdown and plain text --------------------------------------------------------------------------


def clean_markdown(text: str, *, min_words: int = 4) -> list[str]:
    """Extract the prose paragraphs of a Markdown document.

    Headings, fenced and indented code blocks, tables and HTML tags are dropped. Links, emphasis
    and inline code keep their text. Returns one string per paragraph.
    """
    paragraphs: list[list[str]] = [[]]
    in_fence = False
    for line in text.expandtabs(4).splitlines():
        stripped = line.strip()
        if MARKDOWN_FENCE.match(stripped):
            in_fence = not in_fence
            paragraphs.append([])
            continue
        if in_fence or stripped.startswith(("#", "|", ">>>")) or (_indent(line) >= 4 and not paragraphs[-1]):
            paragraphs.append([])
            continue
        if not stripped:
            paragraphs.append([])
            continue
        bullet = BULLET.match(stripped)
        if bullet:
            paragraphs.append([stripped[bullet.end() :]])
            continue
        paragraphs[-1].append(stripped.lstrip("> "))

    def replace(match: re.Match[str]) -> str:
        groups = match.groupdict()
        return next((value for value in groups.values() if value is not None), "")

    cleaned = (_collapse_spaces(MARKDOWN_INLINE.sub(replace, " ".join(lines))) for lines in paragraphs if lines)
    return [paragraph for paragraph in cleaned if is_prose(paragraph, min_words=min_words)]


def clean_plain_text(text: str, *, min_words: int = 4) -> list[str]:
    """Split plain text into paragraphs at blank lines, joining the lines of each paragraph."""
    blocks = re.split(r"\n\s*\n", text.replace("\r\n", "\n"))
    cleaned = (_collapse_spaces(block) for block in blocks)
    return [paragraph for paragraph in cleaned if is_prose(paragraph, min_words=min_words)]


def is_prose(paragraph: str, *, min_words: int = 4, min_letter_fraction: float = 0.6) -> bool:
    """Return whether ``paragraph`` looks like prose, with enough words and mostly letters among non-spaces."""
    if len(paragraph.split()) < min_words:
        return False
    visible = [character for character in paragraph if not character.isspace()]
    letters = sum(character.isalpha() for character in visible)
    return letters >= min_letter_fraction * len(visible)


CLEANERS = {"rst": clean_rst, "markdown": clean_markdown, "text": clean_plain_text}


def document_format(path: Path) -> str | None:
    """Return the format of a source file from its name (``.rst``, ``.rst.txt``, ``.md``, ``.txt``), or None."""
    name = path.name.lower()
    if name.endswith((".rst", ".rst.txt")):
        return "rst"
    if name.endswith((".md", ".markdown")):
        return "markdown"
    if name.endswith(".txt"):
        return "text"
    return None


# Documents and splits ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Document:
    """A cleaned source file: its path relative to the source folder and its paragraphs."""

    name: str
    paragraphs: tuple[str, ...]


def iter_documents(source: str | Path, *, min_words: int = 4) -> Iterator[Document]:
    """Yield the cleaned documents under ``source``, in sorted path order, skipping empty ones.

    Raises:
        SourceNotFoundError: when ``source`` is not a folder or contains no supported file.
    """
    root = Path(source)
    if not root.is_dir():
        raise SourceNotFoundError(f"corpus source '{source}' is not a folder; pass a folder of .rst, .md or .txt files")
    files = sorted(path for path in root.rglob("*") if path.is_file() and document_format(path) is not None)
    if not files:
        raise SourceNotFoundError(f"no .rst, .md or .txt files under '{source}'; pass a folder that contains some")
    for path in files:
        text = path.read_text(encoding="utf-8", errors="replace")
        paragraphs = CLEANERS[document_format(path)](text, min_words=min_words)
        if paragraphs:
            yield Document(path.relative_to(root).as_posix(), tuple(paragraphs))


def assign_split(name: str, *, validation_fraction: float, heldout_fraction: float, seed: int = 0) -> str:
    """Assign a document to ``"train"``, ``"validation"`` or ``"heldout"`` from a hash of its name.

    The hash (SHA-256 of the seed and the name) makes the assignment deterministic and
    independent of every other document, so adding files never moves existing ones.
    """
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    position = int.from_bytes(digest[:8], "big") / 2**64  # uniform in [0, 1)
    if position < heldout_fraction:
        return "heldout"
    if position < heldout_fraction + validation_fraction:
        return "validation"
    return "train"


@dataclass
class CorpusStats:
    """Summary of a corpus written by :func:`build_corpus`: documents, paragraphs and characters per split."""

    source: str
    seed: int
    validation_fraction: float
    heldout_fraction: float
    documents: dict[str, int] = field(default_factory=dict)
    paragraphs: dict[str, int] = field(default_factory=dict)
    characters: dict[str, int] = field(default_factory=dict)


def build_corpus(
    source: str | Path,
    output: str | Path,
    *,
    validation_fraction: float = 0.05,
    heldout_fraction: float = 0.02,
    seed: int = 0,
    min_words: int = 4,
    overwrite: bool = False,
) -> CorpusStats:
    """Clean every document under ``source`` and write ``train.txt``, ``validation.txt`` and ``heldout.txt``.

    Each file has one paragraph per line and a blank line between documents; ``corpus.json``
    records the options and counts. The folder is written atomically.

    Raises:
        ConfigError: when the fractions are not in [0, 1) or leave no training documents.
        SourceNotFoundError: when ``source`` contains no supported file.
        OutputExistsError: when ``output`` exists and ``overwrite`` is false.
    """
    if not (0 <= validation_fraction < 1 and 0 <= heldout_fraction < 1 and validation_fraction + heldout_fraction < 1):
        raise ConfigError(f"validation fraction {validation_fraction} and held-out fraction {heldout_fraction} must be in [0, 1) and sum below 1")
    splits: dict[str, list[Document]] = {name: [] for name in SPLIT_FILES}
    for document in iter_documents(source, min_words=min_words):
        splits[assign_split(document.name, validation_fraction=validation_fraction, heldout_fraction=heldout_fraction, seed=seed)].append(document)
    if not splits["train"]:
        raise ConfigError(f"no training documents out of {sum(map(len, splits.values()))} under '{source}'; lower the validation and held-out fractions")

    for split in ("validation", "heldout"):
        if not splits[split] and (validation_fraction if split == "validation" else heldout_fraction) > 0:
            logger.warning("no document fell into the %s split of '%s'; raise its fraction or add documents", split, source)
    stats = CorpusStats(str(source), seed, validation_fraction, heldout_fraction)
    with atomic_directory(output, overwrite=overwrite) as folder:
        for split, documents in splits.items():
            text = "\n\n".join("\n".join(document.paragraphs) for document in documents)
            (folder / SPLIT_FILES[split]).write_text(text + "\n" if text else "", encoding="utf-8")
            stats.documents[split] = len(documents)
            stats.paragraphs[split] = sum(len(document.paragraphs) for document in documents)
            stats.characters[split] = len(text)
        write_json(folder / "corpus.json", {**asdict(stats), "names": {split: [d.name for d in documents] for split, documents in splits.items()}})
    logger.info("corpus written to %s: %s documents, %s characters", output, stats.documents, stats.characters)
    return stats


def read_documents(path: str | Path) -> list[str]:
    """Read a split file written by :func:`build_corpus`: one string per document, paragraphs on lines."""
    text = Path(path).read_text(encoding="utf-8")
    return [document.strip() for document in re.split(r"\n\s*\n", text) if document.strip()]


# Tokenizer ----------------------------------------------------------------------------------------


def train_bpe_tokenizer(
    texts: Iterable[str],
    output: str | Path,
    *,
    vocab_size: int = 4096,
    min_frequency: int = 2,
    model_max_length: int = 1024,
    overwrite: bool = False,
):
    """Train a byte-level BPE tokenizer on ``texts`` and save it in the Hugging Face format.

    The vocabulary has ``vocab_size`` entries including one special token, ``<|endoftext|>``,
    which is the BOS, EOS and unknown token (as in GPT-2) and separates documents when packing.
    There is no mask token: an MDLM on top uses ``len(tokenizer) + 1`` ids with the mask last.
    Writes ``tokenizer.json``, ``tokenizer_config.json`` and ``special_tokens_map.json``, loadable
    with ``transformers.AutoTokenizer.from_pretrained(output)``. Returns the fast tokenizer.

    Raises:
        ConfigError: when ``vocab_size`` is below 257 (the 256 bytes and the special token).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from mgm2fp.families.mdlm_export import save_tokenizer

    if vocab_size < 257:
        raise ConfigError(f"vocab_size {vocab_size} is below 257; byte-level BPE needs the 256 bytes plus {END_OF_TEXT}")
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=[END_OF_TEXT], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(texts, trainer=trainer)

    wrapped = PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token=END_OF_TEXT, eos_token=END_OF_TEXT, unk_token=END_OF_TEXT, model_max_length=model_max_length)
    with atomic_directory(output, overwrite=overwrite) as folder:
        save_tokenizer(wrapped, folder)
    logger.info("tokenizer with %d tokens written to %s", len(wrapped), output)
    return wrapped


def corpus_summary(folder: str | Path) -> dict:
    """Read the ``corpus.json`` that :func:`build_corpus` wrote into ``folder``."""
    return json.loads((Path(folder) / "corpus.json").read_text())
