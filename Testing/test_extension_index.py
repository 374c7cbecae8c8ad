"""Ready for the Slicer extensions index: licence, catalog entry, pictures, size.

The rules checked here are the index's own (Slicer/ExtensionsIndex and the catalog-entry schema
v1.0.2 in Slicer/Slicer's Schemas folder): an entry needs `$schema`, `category` and `scm_url`,
admits no other keys than the schema's, the repository carries a LICENSE file, the extension's
name (the entry's file name) equals CMake's project() and does not start with "Slicer", the
icon and screenshot URLs of CMakeLists.txt point at files of this repository, and the repository
stays under 100 MB.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parent.parent

# The properties of slicer-extension-catalog-entry-schema-v1.0.2.json ("additionalProperties": false).
SCHEMA_1_0_2_KEYS = {"$schema", "category", "scm_url", "scm_revision", "scm_type",
                     "build_dependencies", "dicom_support_rule", "build_subdirectory", "enabled",
                     "tier"}
SCHEMA_1_0_2_REQUIRED = {"$schema", "category", "scm_url"}
RAW_PREFIX = "https://raw.githubusercontent.com/lkmsegment/LKMSegment/main/"


def cmake_variable(name: str) -> str:
    text = (REPO / "CMakeLists.txt").read_text(encoding="utf-8")
    match = re.search(rf'set\({name} "([^"]*)"\)', text)
    assert match, name
    return match.group(1)


def project_name() -> str:
    text = (REPO / "CMakeLists.txt").read_text(encoding="utf-8")
    return re.search(r"^project\((\w+)\)", text, flags=re.M).group(1)


def test_licence_file_is_apache_2_as_the_package_says():
    text = (REPO / "LICENSE").read_text(encoding="utf-8")
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text
    assert "Apache-2.0" in (REPO / "pyproject.toml").read_text(encoding="utf-8")


def test_catalog_entry_follows_schema_1_0_2():
    name = project_name()
    entry_file = REPO / f"{name}.json"
    entry = json.loads(entry_file.read_text(encoding="utf-8"))
    assert entry["$schema"].endswith("/Schemas/slicer-extension-catalog-entry-schema-v1.0.2.json#")
    assert SCHEMA_1_0_2_REQUIRED <= set(entry), set(entry)
    assert set(entry) <= SCHEMA_1_0_2_KEYS, set(entry) - SCHEMA_1_0_2_KEYS
    assert entry["scm_type"] in ("git", "local")
    assert 1 <= entry["tier"] <= 5
    assert all(isinstance(d, str) for d in entry["build_dependencies"])
    assert entry["category"] == cmake_variable("EXTENSION_CATEGORY")
    assert entry["build_dependencies"] == cmake_variable("EXTENSION_DEPENDS").split()
    assert not name.lower().startswith("slicer")


def test_icon_and_screenshot_urls_point_at_pictures_in_this_repository():
    urls = [cmake_variable("EXTENSION_ICONURL"), *cmake_variable("EXTENSION_SCREENSHOTURLS").split()]
    assert len(urls) >= 3, "an icon and at least two screenshots (panel, result)"
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    for url in urls:
        assert url.startswith(RAW_PREFIX), url
        path = REPO / url[len(RAW_PREFIX):]
        assert path.is_file(), f"{url} names {path}, which is not in the repository"
        with Image.open(path) as picture:
            assert picture.format == "PNG" and min(picture.size) >= 64
        if "/Screenshots/" in url:
            assert url[len(RAW_PREFIX):] in readme, f"the README does not show {path.name}"


def test_repository_is_well_under_the_index_size_limit():
    files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True,
                           check=True).stdout.decode().split("\0")
    total = sum((REPO / f).stat().st_size for f in files if f and (REPO / f).is_file())
    assert total < 100 * 2**20, f"{total / 2**20:.1f} MB"
