"""Sphinx configuration of jrmsprop's documentation site.

Sphinx with myst-nb, as optax and flax build theirs: the pages are MyST Markdown, the API
reference comes from the docstrings (autodoc, numpy/Google sections through napoleon) and the
notebook is executed at build time, so its outputs and plots are the code's of today.
``bash .ci/docs`` builds it with warnings as errors (``-W --keep-going -n``).

The site loads no remote script: math is rendered to MathML at build time by docutils' own
LaTeX converter (browsers draw MathML natively), instead of MathJax from a CDN.
"""

from __future__ import annotations

import inspect
import re
import sys
from pathlib import Path

from docutils import nodes
from docutils.utils.math.latex2mathml import tex2mathml
from sphinx.util import logging

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import jrmsprop

project = "jrmsprop"
author = "The jrmsprop developers"
copyright = "2026, The jrmsprop developers"
release = version = jrmsprop.__version__

extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
]
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]
suppress_warnings: list[str] = []

# MyST: heading anchors so pages can link to sections (a broken one is a warning).
myst_heading_anchors = 3
myst_enable_extensions = ["colon_fence"]

# myst-nb: run the notebook at every build (it is committed without outputs), fail on an error,
# drop tqdm's stderr bars from the page.
nb_execution_mode = "force"
nb_execution_timeout = 600
nb_execution_raise_on_error = True
nb_output_stderr = "remove"
nb_execution_show_tb = True

# autodoc: the signature as written, type hints in the description, added only to the
# parameters and returns the docstring documents: with "all", each of a docstring's field lists
# (napoleon makes one per section, split by prose) got every type again, and a page showed
# "Parameters" and "Return type" twice.
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_typehints_description_target = "documented"
autodoc_typehints_format = "short"
autodoc_type_aliases = {"RMSpropState": "jrmsprop.RMSpropState"}
autodoc_default_options = {"members": True, "undoc-members": True, "show-inheritance": False}
napoleon_google_docstring = True
napoleon_numpy_docstring = True
# autosummary: the summary table at the head of each module on the API page, linking to the
# entries below it on the same page; no stub pages are generated.
autosummary_generate = False

# Math: MathML made at build time, no MathJax (see the module docstring).
html_math_renderer = "mathml"

# nitpicky (-n): every cross-reference must resolve. There is no network at build time, so no
# intersphinx: names from other projects and from Python's standard library are expected to stay
# unresolved, and only those.
nitpicky = True
_EXTERNAL = (
    r"(jax|jaxlib|jnp|optax|chex|numpy|np|torch|flax|equinox|orbax|typing|collections|"
    r"types|enum|abc|contextlib|pathlib)(\..*)?"
)
_TYPING_NAMES = (
    r"(Any|Callable|Mapping|Sequence|Iterable|Iterator|NamedTuple|Optional|Union|"
    r"ArrayTree|PyTree|Array|ArrayLike|DTypeLike|Rule|Mesh|NamedSharding|PartitionSpec|"
    r"GradientTransformation|GradientTransformationExtraArgs|OptState|Params|Updates|"
    r"ScalarOrSchedule|Schedule|Shape|Sharding|KeyPath|AbstractMesh)"
)
_BUILTINS = (
    r"(int|float|bool|str|bytes|dict|list|tuple|set|object|type|None|complex|"
    r"Exception|ValueError|TypeError|RuntimeError|KeyError|slice|callable|optional)"
)
nitpick_ignore_regex = [
    (r"py:.*", _EXTERNAL),
    (r"py:.*", _TYPING_NAMES),
    (r"py:.*", _BUILTINS),
]

html_theme = "sphinx_book_theme"
html_title = f"jrmsprop {release}"
html_theme_options = {
    "show_toc_level": 2,
    "navigation_with_keys": False,
}
# custom.css: code wraps on narrow screens instead of hiding the end of its lines.
html_static_path = ["_static"]
html_css_files = ["custom.css"]

# A public name without a docstring is a warning, so -W fails the build.
_logger = logging.getLogger("jrmsprop.docs")


def _warn_on_missing_docstring(app, what, name, obj, options, lines):
    leaf = name.rsplit(".", 1)[-1]
    if leaf.startswith("_") or what in ("attribute", "data"):
        return
    if not any(line.strip() for line in lines) and not inspect.getdoc(obj):
        _logger.warning(f"{name}: public {what} without a docstring", type="jrmsprop")


def _tex(node):
    # Inside \text{...} docutils keeps "\_" as written: give it the underscore LaTeX prints.
    return re.sub(r"\\text\{[^}]*\}", lambda m: m.group(0).replace("\\_", "_"), node.astext())


def _mathml_inline(self, node):
    self.body.append(tex2mathml(_tex(node)))
    raise nodes.SkipNode


def _mathml_block(self, node):
    latex = _tex(node)
    if not node.get("nowrap") and "\\\\" in latex:  # lines aligned at "&", as MathJax's split
        latex = "\\begin{aligned}" + latex + "\\end{aligned}"
    self.body.append(self.starttag(node, "div", CLASS="math"))
    self.body.append(tex2mathml(latex, as_block=True))
    self.body.append("</div>\n")
    raise nodes.SkipNode


def setup(app):
    app.connect("autodoc-process-docstring", _warn_on_missing_docstring)
    app.add_html_math_renderer("mathml", (_mathml_inline, None), (_mathml_block, None))
