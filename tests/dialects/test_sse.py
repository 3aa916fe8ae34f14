"""The SSE parser, directly: any split of a valid stream into chunks, with any of the three
line ends, gives the same frames as the whole stream does."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from proxy.dialects.sse import FrameSplitter, iter_frames, parse_frame

# Field values hold no line end (a line end ends the field); anything else goes.
_VALUE = st.text(st.characters(blacklist_characters="\r\n", blacklist_categories=("Cs",)), max_size=30)
_LINE = st.one_of(
    st.builds(lambda v: "data: " + v, _VALUE),
    st.builds(lambda v: "data:" + v, _VALUE),
    st.builds(lambda v: "event: " + v, _VALUE.filter(lambda v: v.strip())),
    st.builds(lambda v: ": " + v, _VALUE),  # a comment
    st.just("data"),
)
#: a stream: frames of one or more lines, each frame holding at least one data line
_FRAMES = st.lists(
    st.lists(_LINE, min_size=1, max_size=4).map(
        lambda lines: [*lines, "data: {}"] if not any(line.startswith("data") for line in lines) else lines
    ),
    min_size=1,
    max_size=6,
)
_LINE_END = st.sampled_from(["\n", "\r\n", "\r"])


def _encode(frames: list[list[str]], line_end: str) -> bytes:
    return "".join(line_end.join(lines) + line_end * 2 for lines in frames).encode()


def _parsed(chunks: list[bytes]) -> list[tuple[str | None, bytes]]:
    splitter = FrameSplitter()
    frames = [frame for chunk in chunks for frame in splitter.feed(chunk)]
    frames += splitter.close()
    return [parse_frame(frame) for frame in frames]


@st.composite
def _split(draw: st.DrawFn, body: bytes) -> list[bytes]:
    cuts = sorted(draw(st.lists(st.integers(0, len(body)), max_size=12)))
    edges = [0, *cuts, len(body)]
    return [body[a:b] for a, b in zip(edges, edges[1:])]


@given(frames=_FRAMES, line_end=_LINE_END, data=st.data())
def test_any_chunking_and_line_end_parses_the_same(frames: list[list[str]], line_end: str, data: st.DataObject) -> None:
    expected = _parsed([_encode(frames, "\n")])
    assert len(expected) == len(frames)
    body = _encode(frames, line_end)
    assert _parsed(data.draw(_split(body))) == expected


@given(frames=_FRAMES, line_end=_LINE_END)
def test_byte_by_byte(frames: list[list[str]], line_end: str) -> None:
    body = _encode(frames, line_end)
    assert _parsed([body[i : i + 1] for i in range(len(body))]) == _parsed([_encode(frames, "\n")])


def test_crlf_split_between_cr_and_lf_keeps_frames_apart() -> None:
    """The reported case: a frame's closing ``\\r\\n`` cut after its ``\\r``."""
    body = b'data: {"a": 1}\r\n\r\ndata: {"b": 2}\r\n\r\n'
    cut = body.index(b"\r\n\r\n") + 3  # between the second \r and its \n
    assert _parsed([body[:cut], body[cut:]]) == [(None, b'{"a": 1}'), (None, b'{"b": 2}')]


def test_last_frame_without_its_blank_line_is_kept() -> None:
    assert [parse_frame(f) for f in iter_frames(b"data: 1\n\ndata: [DONE]")] == [(None, b"1"), (None, b"[DONE]")]
    assert [parse_frame(f) for f in iter_frames(b"data: 1\r\n\r\ndata: 2\r")] == [(None, b"1"), (None, b"2")]
