"""Text shaping per voice (``text: {strip_markdown, lexicon}``): what an LLM writes, as a
listener should hear it. The fixtures are assistant replies as chat models write them; each
expected text is what a caller would want spoken."""

# ruff: noqa: RUF001  (smart quotes and full-width punctuation are what the replies hold)

from __future__ import annotations

import asyncio
import json
import time
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from types import MappingProxyType

import httpx
import pytest
import respx

from gateway.config.model import TextShaping
from gateway.shaping import TextShaper, strip_markdown
from tests.answering_upstream import (
    CHUNK,
    Answer,
    AnsweringUpstream,
    custom_block,
    metric,
    scrape,
    serving,
)
from tests.config_support import MINIMAL, only_problem, problems

LEXICON = {
    "SQL": "sequel",
    "PostgreSQL": "Postgres Q L",
    "psql": "P S Q L",
    "Dr.": "Doctor",
    "e.g.": "for example",
    "OpenAI": "Open A I",
}


def shaper(strip: bool = True, lexicon: Mapping[str, str] | None = None) -> TextShaper:
    return TextShaper(TextShaping(strip_markdown=strip, lexicon=MappingProxyType(lexicon or {})))


SPEAK = shaper(lexicon=LEXICON)

# ---------------------------------------------------------------- real replies

SETUP_GUIDE = """\
## Setting up **PostgreSQL** on Ubuntu 🐘

Great question! Here's a *step-by-step* guide:

1. **Update** your package index:
   ```bash
   sudo apt update
   ```
2. Install the server with `sudo apt install postgresql`
3. Start the service:
   - On systemd: `systemctl start postgresql`
   - Check it with `pg_isready` ✅
     - Nested: the default port is `5432`

> **Tip:** the default user is `postgres`, e.g. run `sudo -u postgres psql`.

For more, see the [official docs](https://www.postgresql.org/docs/current/) or
[Wikipedia](https://en.wikipedia.org/wiki/PostgreSQL_(database)).

---

Happy hacking! 🚀👍🏽
"""
SETUP_GUIDE_SPOKEN = (
    "Setting up Postgres Q L on Ubuntu. Great question! Here's a step-by-step guide: "
    "Update your package index: Install the server with sudo apt install postgresql. "
    "Start the service: On systemd: systemctl start postgresql. Check it with pg_isready. "
    "Nested: the default port is 5432. Tip: the default user is postgres, for example run "
    "sudo -u postgres P S Q L. For more, see the official docs or Wikipedia. Happy hacking!"
)

COMPARISON = """\
Here's a quick comparison of the three databases:

| Database | Type | Best for |
|:---------|:----:|---------:|
| SQLite | Embedded | Mobile apps & tests |
| MySQL | Server | Web apps |
| **PostgreSQL** | Server | Complex queries |

### Key takeaways

* SQL is the common language of all three.
* ~~MongoDB~~ isn't relational.
+ Use `my_table.user_id` for joins, not `*`.

Math check: 2 * 3 = 6, 2*3 = 6 and 2**10 = 1024, so a < b && c > d.
Questions? Write to support_team@example.com or see <https://example.com/faq>.
![Architecture diagram](https://example.com/img/arch.png)
"""
COMPARISON_SPOKEN = (
    "Here's a quick comparison of the three databases: Database, Type, Best for. "
    "SQLite, Embedded, Mobile apps & tests. MySQL, Server, Web apps. "
    "Postgres Q L, Server, Complex queries. Key takeaways. "
    "sequel is the common language of all three. MongoDB isn't relational. "
    "Use my_table.user_id for joins, not *. "
    "Math check: 2 * 3 = 6, 2*3 = 6 and 2**10 = 1024, so a < b && c > d. "
    "Questions? Write to support_team@example.com or see https://example.com/faq. "
    "Architecture diagram"
)

TRIP = """\
# Your trip to Paris 🇫🇷✈️

Here's what I'd pack 👨‍👩‍👧‍👦:

- Passport 🛂 and tickets 🎫
- A good umbrella ☂️ (it rains!)
- Comfortable shoes 👟🏾

**Top 3 sights:**
1️⃣ The Eiffel Tower
2️⃣ The Louvre ❤️
3️⃣ Montmartre 👩🏽‍🎨

Dr. Martin says “bring a jacket” — it’s cool in April 🌧️. Have fun 😊🎉
"""
TRIP_SPOKEN = (
    "Your trip to Paris. Here's what I'd pack: Passport and tickets. "
    "A good umbrella (it rains!) Comfortable shoes. Top 3 sights: The Eiffel Tower. "
    "The Louvre. Montmartre. Doctor Martin says “bring a jacket” — it’s cool in April. "
    "Have fun"
)

CHINESE = """\
## 数据库简介 📚

**SQL**（结构化查询语言）是一种用于管理数据的语言。主要特点：

- 简单易学！
- 支持 `SELECT` 和 `JOIN` 等操作
- 我用OpenAI的模型写了这个例子😊

> 注意：请先备份数据。
"""
CHINESE_SPOKEN = (
    "数据库简介。 sequel（结构化查询语言）是一种用于管理数据的语言。主要特点： 简单易学！ "
    "支持 SELECT 和 JOIN 等操作。 我用Open A I的模型写了这个例子。 注意：请先备份数据。"
)


@pytest.mark.parametrize(
    ("reply", "spoken"),
    [
        (SETUP_GUIDE, SETUP_GUIDE_SPOKEN),
        (COMPARISON, COMPARISON_SPOKEN),
        (TRIP, TRIP_SPOKEN),
        (CHINESE, CHINESE_SPOKEN),
    ],
    ids=["setup-guide", "comparison-table", "emoji-trip", "chinese"],
)
def test_an_assistant_reply_is_spoken_as_a_listener_should_hear_it(reply: str, spoken: str) -> None:
    assert SPEAK(reply) == spoken


@pytest.mark.parametrize(
    ("text", "spoken"),
    [
        # Emphasis marks go; multiplication, powers and globs in code stay.
        ("**bold**, *italic*, ***both***, __bold__, _it_", "bold, italic, both, bold, it"),
        ("2 * 3, 2*3, 2**10, SELECT * FROM t", "2 * 3, 2*3, 2**10, SELECT * FROM t"),
        ("run `ls *.py` and `__init__`", "run ls *.py and __init__"),
        (r"a literal \*star\* and \_under\_", "a literal *star* and _under_"),
        ("snake_case and my__var stay; _private goes", "snake_case and my__var stay; private goes"),
        ("see https://x.example/a_b_/c*d_ now", "see https://x.example/a_b_/c*d_ now"),
        # Links keep their text, images their alt text; addresses go.
        ('[the docs](https://a.example/x "Docs") and [ref][1]', "the docs and ref"),
        ("[Python](https://en.wikipedia.org/wiki/Python_(language)) rocks", "Python rocks"),
        ("![a cat](cat.png) sat", "a cat sat"),
        ("mail <mailto:a@b.example> or <c@d.example>", "mail a@b.example or c@d.example"),
        ("[1]: https://a.example\nText.", "Text."),
        # Headings: closing hashes go, a C# heading keeps its #; #hashtag is no heading.
        ("# Why C#\n## Done ##\n#hashtag", "Why C#. Done. #hashtag"),
        # Fenced code is dropped whole; an unclosed fence loses only its own line.
        ("Run:\n```\nrm -rf /\n```\nDone.", "Run: Done."),
        ("Run:\n~~~~sh\nmake\n~~~~\nDone.", "Run: Done."),
        ("Start:\n```python\nprint('hi')", "Start: print('hi')"),
        ("```inline``` code", "inline code"),
        # Task lists, bullets of every kind, a line break tag.
        ("- [ ] write tests\n- [x] fix bug", "write tests. fix bug."),
        ("• one\n2) two", "one. two."),
        ("first<br>second<br/>third", "first second third"),
        # Quotes nested and rules of every kind.
        ("> > deep\n***\n___\n- - -\nend", "deep end"),
        # Emoji of every kind: ZWJ sequences, flags, tones, keycaps, text-style symbols.
        ("ok 👩🏽‍💻 🏳️‍🌈 🏴󠁧󠁢󠁳󠁣󠁴󠁿 ✔️ ⭐ done", "ok done"),
        ("great😀news", "great news"),
        ("press 1️⃣ or #️⃣ now", "press 1 or now"),
        # Smart quotes, dashes, ampersands and angle brackets are text.
        ("“Tom & Jerry” <3 — it’s 5 < 6", "“Tom & Jerry” <3 — it’s 5 < 6"),
        # Invisible characters go; every whitespace run is one space.
        ("a\u200bb\ufeff c\u00ad\t\t d\n\n\ne", "ab c d e"),
    ],
)
def test_markdown_is_stripped(text: str, spoken: str) -> None:
    assert shaper()(text) == spoken


def test_a_voice_without_markdown_stripping_keeps_the_marks() -> None:
    assert shaper(strip=False)("**Hi** 👋\n# there") == "**Hi** 👋 # there"


def test_a_reply_that_is_only_code_or_emoji_shapes_to_nothing() -> None:
    assert shaper()("```python\nprint(1)\n```") == ""
    assert shaper()("🎉🎉 ✨ [](https://a.example)") == ""


# ---------------------------------------------------------------- lexicon


def test_lexicon_replaces_whole_words_only_and_case_sensitively() -> None:
    say = shaper(strip=False, lexicon={"SQL": "sequel"})
    assert say("SQL, SQLite, MySQL, sql, SQL's (SQL) SQL_x xSQL") == (
        "sequel, SQLite, MySQL, sql, sequel's (sequel) SQL_x xSQL"
    )


def test_lexicon_prefers_the_longest_key() -> None:
    say = shaper(
        strip=False,
        lexicon={"New York": "N Y", "New York City": "the city", "York": "Y", "C": "see"},
    )
    assert say("New York City, New York, New York Cityscape, York, C, C++") == (
        "the city, N Y, N Y Cityscape, Y, see, see++"
    )


def test_lexicon_keys_of_several_words_match_across_any_whitespace() -> None:
    say = shaper(strip=False, lexicon={"New  York": "N Y"})
    assert say("in New\nYork and New \t York") == "in N Y and N Y"


def test_lexicon_keys_ending_in_punctuation() -> None:
    say = shaper(
        strip=False, lexicon={"Dr.": "Doctor", "e.g.": "for example", "C++": "C plus plus"}
    )
    assert say("Dr. Who, e.g., C++ and C++11 (Dr.Who)") == (
        "Doctor Who, for example, C plus plus and C++11 (Dr.Who)"
    )


def test_a_replacement_is_not_replaced_again() -> None:
    say = shaper(strip=False, lexicon={"AI": "A I", "A": "ay", "I": "eye", "GPT": "AI model"})
    assert say("AI and GPT") == "A I and AI model"


def test_lexicon_words_next_to_chinese_are_whole_words() -> None:
    say = shaper(strip=False, lexicon={"OpenAI": "Open A I", "微软": "Microsoft"})
    assert (
        say("我用OpenAI和微软的产品，OpenAIX不算") == "我用Open A I和Microsoft的产品，OpenAIX不算"
    )


def test_a_large_lexicon() -> None:
    words = {f"term{i}": f"said {i}" for i in range(5000)}
    say = shaper(strip=False, lexicon=words)
    assert say("term0 term42 term4999 term5000 term42x") == (
        "said 0 said 42 said 4999 term5000 term42x"
    )


def test_order_markdown_then_lexicon_then_whitespace() -> None:
    # The lexicon sees the text without marks (**SQL** is SQL) and its replacements are not
    # read as Markdown; an empty replacement leaves no double space.
    say = shaper(lexicon={"SQL": "*sequel*", "um": ""})
    assert say("**SQL**, um, fine") == "*sequel*, , fine"


# ---------------------------------------------------------------- hostile input

HOSTILE = {
    "brackets": "[",
    "link openers": "](",
    "link heads": "[a](",
    "images": "![",
    "stars and underscores": "*_",
    "emphasis words": "*a ",
    "hashes": "#",
    "heading lines": "# a #\n",
    "quotes": ">",
    "quoted lists": "> - ",
    "backticks": "`",
    "code spans": "`a",
    "fences": "```x\n",
    "autolinks": "<http:",
    "emails": "<a@",
    "emoji": "👨‍👩‍👧‍👦",
    "spaces": " ",
    "tabs": " \t",
    "spaces before emoji": "   😀",
    "table rows": "|a\n",
    "table rules": "|-",
    "escapes": "\\",
    "lexicon prefixes": "abcdefghi",
    "lexicon words": "New York ",
    "url": "https://",
}


@pytest.mark.parametrize("unit", HOSTILE.values(), ids=HOSTILE.keys())
def test_hostile_input_shapes_in_linear_time(unit: str) -> None:
    # Each of these took seconds with a pattern that backtracked (a run of 64 KB of spaces
    # took 20 s); linear shaping takes milliseconds. Judged by how the time grows, not by the
    # time itself (these machines' speed differs by two times and more): eight times the text
    # takes about eight times as long when shaping is linear, sixty-four when it is quadratic.
    say = shaper(
        lexicon={"abcdefghij" * 10: "x", "New York City": "NYC", **LEXICON},
    )

    texts = {size: (unit * (size // len(unit) + 1))[:size] for size in (8192, 65536)}
    took = {size: float("inf") for size in texts}
    for _ in range(5):  # the sizes in turn, so that the machine's speed meets both alike
        for size, text in texts.items():
            started = time.perf_counter()
            say(text)
            took[size] = min(took[size], time.perf_counter() - started)
    small, large = took[8192], took[65536]
    assert large < 2.0, f"{large * 1000:.0f} ms"
    # A floor under the small text's time: a timer's resolution is not a growth.
    assert large / max(small, 0.0005) < 20, f"{small * 1000:.1f} -> {large * 1000:.1f} ms"


def test_strip_markdown_alone_never_grows_the_text() -> None:
    for unit in HOSTILE.values():
        text = unit * 100
        assert len(strip_markdown(text)) <= len(text) + text.count("\n") * 2


# ---------------------------------------------------------------- the routing file


def voice_text(block: str) -> str:
    return MINIMAL + "    text:\n" + "".join(f"      {line}\n" for line in block.splitlines())


@pytest.mark.parametrize(
    ("block", "path", "line", "message"),
    [
        ("lexicon: [SQL, sequel]", "voices.joe.text.lexicon", 11, "expected a mapping"),
        ('lexicon: {"": x}', 'voices.joe.text.lexicon[""]', 11, "must not be empty"),
        ("lexicon:\n  ok: fine\n  '  ': x", 'voices.joe.text.lexicon["  "]', 13, "empty"),
        (f"lexicon: {{{'a' * 201}: x}}", f"voices.joe.text.lexicon.{'a' * 201}", 11, "200"),
        (f"lexicon: {{SQL: {'b' * 201}}}", "voices.joe.text.lexicon.SQL", 11, "200"),
        ("lexicon: {SQL: [a]}", "voices.joe.text.lexicon.SQL", 11, "expected a string"),
        ("strip_markdown: 'yes'", "voices.joe.text.strip_markdown", 11, "true or false"),
        ("strip_markdown: 1", "voices.joe.text.strip_markdown", 11, "true or false"),
        ("strip_markdwn: true", "voices.joe.text.strip_markdwn", 11, "strip_markdown"),
    ],
)
def test_text_block_errors_name_their_path_and_line(
    block: str, path: str, line: int, message: str
) -> None:
    found_line, found_path, found_message = only_problem(voice_text(block))
    assert (found_line, found_path) == (line, path)
    assert message in found_message


def test_text_must_be_a_mapping() -> None:
    assert only_problem(MINIMAL + "    text: true\n")[:2] == (10, "voices.joe.text")


def test_too_many_lexicon_entries_is_an_error_at_the_lexicon() -> None:
    entries = "".join(f"  w{i}: x\n" for i in range(10_001))
    found = problems(voice_text("lexicon:\n" + entries))
    assert found == [(11, "voices.joe.text.lexicon", "at most 10000 entries, got 10001")]


# ---------------------------------------------------------------- through a real gateway

AZURE = "https://westeurope.tts.speech.microsoft.com/cognitiveservices/v1"
BODY = {"SampleRate": 24000}


def routing(good: str, bad: str) -> str:
    """Voices on a healthy and a failing custom upstream and on Azure (SSML), with and
    without shaping; ``first`` fails over to ``second``, which shapes differently."""
    markdown = {"strip_markdown": True, "lexicon": {"SQL": "sequel"}}
    document = {
        "server": {"default_voice": "md"},
        "providers": {
            "up": custom_block(good),
            "down": custom_block(bad),
            "az": {"type": "azure", "api_key": "azure-key", "region": "westeurope"},
        },
        "voices": {
            "md": {"provider": "up", "cache": True, "text": markdown},
            "plain": {"provider": "up"},
            "ssml": {"provider": "az", "voice": "en-US-AvaNeural", "text": markdown},
            "first": {"provider": "down", "text": markdown, "fallback": ["second"]},
            "second": {"provider": "up", "text": {"lexicon": {"SQL": "S Q L"}}},
        },
    }
    return json.dumps(document)


async def speak(client: httpx.AsyncClient, url: str, voice: str, text: str) -> httpx.Response:
    return await client.post(url + "/stream-audio", json=dict(BODY, VoiceId=voice, Text=text))


async def test_the_provider_gets_the_shaped_text_and_both_spellings_share_one_cache_entry() -> None:
    async with (
        AnsweringUpstream() as good,
        AnsweringUpstream() as bad,
        serving(routing(good.url, bad.url)) as (url, client),
    ):
        # Line breaks reach the shaper (the list item is one), \r\n as well as \n.
        first = await speak(client, url, "md", "**Hello** there, _friend_!\r\n\r\n- SQL rocks 🎸")
        assert first.status_code == 200, first.text
        assert first.headers["x-cache"] == "miss"
        assert [r.text for r in good.requests] == ["Hello there, friend! sequel rocks."]

        async def stored() -> bool:
            page = await scrape(client, url)
            return (metric(page, "tts_cache_stored_total", provider="up") or 0) >= 1

        for _ in range(200):  # the entry is stored once the answer has ended
            if await stored():
                break
            await asyncio.sleep(0.01)
        assert await stored()
        second = await speak(client, url, "md", "Hello there, friend! SQL rocks.")
        assert second.status_code == 200, second.text
        assert second.headers["x-cache"] == "hit"
        assert second.content == first.content == CHUNK
        assert good.count == 1


@pytest.mark.respx(using="httpx", assert_all_called=False)
async def test_an_ssml_provider_still_escapes_what_shaping_leaves(
    respx_mock: respx.MockRouter,
) -> None:
    respx_mock.route(host="127.0.0.1").pass_through()
    route = respx_mock.post(AZURE).mock(
        return_value=httpx.Response(200, content=CHUNK, headers={"Content-Type": "audio/pcm"})
    )
    async with (
        AnsweringUpstream() as good,
        AnsweringUpstream() as bad,
        serving(routing(good.url, bad.url)) as (url, client),
    ):
        answer = await speak(client, url, "ssml", "**Tom & Jerry** say <hi> 😀\n# SQL & <b>")
        assert answer.status_code == 200, answer.text
    sent = route.calls.last.request.content
    assert b"Tom &amp; Jerry say &lt;hi&gt; sequel &amp; &lt;b&gt;." in sent
    voice = ET.fromstring(sent).find("{http://www.w3.org/2001/10/synthesis}voice")
    assert voice is not None
    assert "".join(voice.itertext()) == "Tom & Jerry say <hi> sequel & <b>."


@pytest.mark.parametrize(
    "text", ["```python\nprint('hi')\n```", "[](https://example.com) 🎉", "> ```\n> x = 1\n> ```"]
)
async def test_text_that_shapes_to_nothing_is_a_400_naming_text_without_a_provider_call(
    text: str,
) -> None:
    async with (
        AnsweringUpstream() as good,
        AnsweringUpstream() as bad,
        serving(routing(good.url, bad.url)) as (url, client),
    ):
        answer = await speak(client, url, "md", text)
        assert answer.status_code == 400
        error = answer.json()["error"]
        assert error["field"] == "Text"
        assert error["code"] == "empty_text"  # as for a text with nothing to speak at all
        assert "nothing to speak" in error["message"]
        # The same text to a voice without shaping is spoken as written.
        assert (await speak(client, url, "plain", text)).status_code == 200
    assert good.count == 1 and bad.count == 0


async def test_a_fallback_voice_speaks_its_own_shaping_of_the_text() -> None:
    async with (
        AnsweringUpstream() as good,
        AnsweringUpstream(Answer(status=503)) as bad,
        serving(routing(good.url, bad.url)) as (url, client),
    ):
        answer = await speak(client, url, "first", "**SQL** is *fun* 😀")
        assert answer.status_code == 200, answer.text
        assert answer.content == CHUNK
    assert [r.text for r in bad.requests] == ["sequel is fun"]
    assert [r.text for r in good.requests] == ["**S Q L** is *fun* 😀"]


async def test_a_voice_without_a_text_block_gets_the_callers_text() -> None:
    async with (
        AnsweringUpstream() as good,
        AnsweringUpstream() as bad,
        serving(routing(good.url, bad.url)) as (url, client),
    ):
        text = "**SQL** & <b>  Dr. 😀\n# Title\r\n\t- item"
        answer = await speak(client, url, "plain", text)
        assert answer.status_code == 200, answer.text
    # As callers always had it: line breaks and tabs are spaces, nothing else changes.
    assert [r.text for r in good.requests] == ["**SQL** & <b>  Dr. 😀 # Title - item"]
