"""Names people read and compare: user, project and class names, and imported file names.

They are normalised and checked with the PRECIS framework (precis-i18n): user, project and
class names as nicknames (RFC 8266: NFKC, other spaces made plain spaces, trimmed, runs of
spaces made one), file names by NFKC alone. Control, format (zero-width, bidi overrides) and
other invisible characters are refused, so two names that look alike are the same name or an
error. `name_key` is what "the same name" means: the normalised name, case-folded.
"""

import unicodedata

from precis_i18n import get_profile

from backend.core.errors import Invalid

_NAME = get_profile("NicknameCasePreserved")
_KEY = get_profile("NicknameCaseMapped:CaseFold")
_TEXT = get_profile("FreeFormClass")  # the check alone: no mapping, spaces kept
_UNNAMED = {"Cc": "a control character", "Co": "a private-use character", "Cs": "a surrogate"}


def display_name(value: str, what: str) -> str:
    """`value` normalised (case kept); raises Invalid naming `what` ("user name") and the character."""
    return _enforce(_NAME, value, what)


def name_key(value: str, what: str) -> str:
    """The case-folded normalised name: two names are the same name when their keys are equal."""
    return _enforce(_KEY, value, what)


def file_name(path: str) -> str:
    """An imported file's path ("/"-separated) in NFKC; raises Invalid for a '..' part or a
    character that is refused."""
    path = unicodedata.normalize("NFKC", path)
    if ".." in path.split("/"):
        raise Invalid(f"file name {path!r} has a '..' part")
    _enforce(_TEXT, path, "file name")
    return path


def _enforce(profile, value: str, what: str) -> str:
    try:
        return profile.enforce(value)
    except UnicodeEncodeError as error:
        if error.reason.endswith("/empty"):
            raise Invalid(f"{what} {value!r} is blank") from error
        raise Invalid(
            f"{what} {value!r} holds {_described(error.object[error.start])}, which is not allowed: "
            f"control, format (zero-width, bidi) and invisible characters are refused"
        ) from error


def _described(character: str) -> str:
    category = unicodedata.category(character)
    name = unicodedata.name(character, None) or _UNNAMED.get(category, "an unassigned character")
    return f"U+{ord(character):04X} {name}"
