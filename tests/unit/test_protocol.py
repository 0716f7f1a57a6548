from __future__ import annotations

import json

import pytest

from common.errors import InvalidName
from common.names import check_name
from serving.protocol import rewrite_sse_line


def test_sse_rewrite_hides_engine_name():
    line = "data: " + json.dumps({"model": "lpx:acme:rev:abc", "choices": [{"text": "x"}]})
    out, chunk = rewrite_sse_line(line, "rev")
    assert json.loads(out[5:])["model"] == "rev" and chunk["choices"] == [{"text": "x"}]
    assert rewrite_sse_line("data: [DONE]", "rev") == ("data: [DONE]", None)
    assert rewrite_sse_line("", "rev") == ("", None)


@pytest.mark.parametrize("bad", ["../x", "%2e%2e", "/abs", "s3://x", "Ｘ", "a" * 64, "", "A", "a.b", "a/b",
                                 "lpx:x", "é"])
def test_hostile_names_are_refused(bad):
    with pytest.raises(InvalidName):
        check_name(bad)


def test_good_names_pass():
    for good in ("acme", "a", "my-adapter_2", "0abc"):
        assert check_name(good) == good
