"""The manual pages (man/): they lint clean, their OPTIONS list exactly the flags that
`soth-mitm --help` and `soth-mitm-tail --help` print, and soth-mitm.json(5) has an entry for
every key of docs/config.md (docs/operating.md, "Manual pages")."""
import json
import os
import re
import subprocess
import unittest

from harness import PROXY_BIN, REPO, TAIL_BIN

MAN = os.path.join(REPO, "man")
PAGES = ("soth-mitm.1", "soth-mitm-tail.1", "soth-mitm.json.5")


def read(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


def section(page, name):
    """The lines of one .SH section of a man page."""
    out, inside = [], False
    for line in read(os.path.join(MAN, page)).splitlines():
        if line.startswith(".SH "):
            inside = line[4:].strip().strip('"') == name
            continue
        if inside:
            out.append(line)
    if not out:
        raise AssertionError(f"{page}: no section {name}")
    return out


def tags(lines):
    """The tag line of each .TP/.TQ item (the line after the macro), roff escapes undone."""
    out = []
    for i, line in enumerate(lines[:-1]):
        if line in (".TP", ".TQ"):
            tag = lines[i + 1]
            tag = re.sub(r"^\.[A-Z]+ ?", "", tag).replace("\\-", "-").replace("\\c", "")
            out.append(tag.replace('"', ""))
    return out


def page_flags(page):
    flags = set()
    for tag in tags(section(page, "OPTIONS")):
        flags.update(re.findall(r"--[a-z][a-z-]*", tag))
    return flags


def help_flags(binary):
    out = subprocess.run([binary, "--help"], capture_output=True, timeout=30)
    assert out.returncode == 0, out
    return set(re.findall(r"(?<![\w-])--[a-z][a-z-]*", out.stdout.decode()))


def doc_keys():
    """Keys of the docs/config.md "Keys" table (first column, in backticks)."""
    text = read(os.path.join(REPO, "docs", "config.md"))
    table = text.split("\n## Keys\n", 1)[1].split("\n#", 1)[0]
    keys = set()
    for line in table.splitlines():
        if line.startswith("| `"):
            names = re.findall(r"`([^`]+)`", line.split("|")[1])
            # "`events.sinks[].user`, `password`": a bare name is a sibling of the first.
            parent = names[0].rsplit(".", 1)[0] + "." if "." in names[0] else ""
            keys.update(n if "." in n else parent + n for n in names)
    return keys


def page_keys():
    keys = set()
    for tag in tags(section("soth-mitm.json.5", "KEYS")):
        for word in re.split(r"[ ,]+", tag):
            if re.fullmatch(r"[a-z0-9_]+(\[\])?(\.[a-z0-9_]+(\[\])?)*", word):
                keys.add(word)
    return keys


class ManPageTests(unittest.TestCase):
    def test_pages_lint_clean(self):
        for page in PAGES:
            path = os.path.join(MAN, page)
            out = subprocess.run(["mandoc", "-T", "lint", "-W", "style", path],
                                 capture_output=True, timeout=60)
            msgs = (out.stdout + out.stderr).decode()
            self.assertEqual((out.returncode, msgs), (0, ""), page)
            out = subprocess.run(["groff", "-ww", "-z", "-man", path], capture_output=True,
                                 timeout=60)
            self.assertEqual((out.returncode, out.stderr.decode()), (0, ""), page)

    def test_options_match_help(self):
        for binary, page in ((PROXY_BIN, "soth-mitm.1"), (TAIL_BIN, "soth-mitm-tail.1")):
            with self.subTest(page=page):
                flags = help_flags(binary)
                self.assertIn("--help", flags)
                self.assertEqual(page_flags(page), flags)

    def test_every_config_key_has_an_entry(self):
        documented = doc_keys()
        self.assertIn("listen", documented)
        self.assertIn("tls.learning.window_s", documented)
        listed = page_keys()
        self.assertEqual(documented - listed, set(), "keys of docs/config.md missing in "
                         "soth-mitm.json(5)")
        # Every entry of the page is a key docs/config.md names somewhere (its table, or the
        # keys it lists as planned) or a key inside one its table has (the sink keys inside
        # `events.sinks[]`), so a misspelt entry cannot hide there.
        text = read(os.path.join(REPO, "docs", "config.md"))
        unknown = {k for k in listed - documented if f"`{k}`" not in text and
                   not any(k.startswith(d + ".") for d in documented if d.endswith("[]"))}
        self.assertEqual(unknown, set())

    def test_check_config_keys_have_entries(self):
        # The effective config printed by --check-config is the other list of every key.
        out = subprocess.run([PROXY_BIN, "--check-config",
                              os.path.join(REPO, "dist", "config.json")],
                             capture_output=True, timeout=30)
        self.assertEqual(out.returncode, 0, out.stderr)
        cfg = json.loads(out.stdout)

        def walk(obj, prefix):
            for k, v in obj.items():
                key = prefix + k
                if isinstance(v, dict) and k not in ("resolve",):
                    yield from walk(v, key + ".")
                elif isinstance(v, list) and k in ("rules", "sinks", "users", "networks"):
                    yield key + "[]"
                else:
                    yield key

        listed = page_keys() | {"tls.ca_cert", "tls.ca_key"}
        self.assertEqual(set(walk(cfg, "")) - listed, set())


if __name__ == "__main__":
    unittest.main()
