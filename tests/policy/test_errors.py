"""leafe.policy.errors: what a library error says, on one line."""

from leafe.policy.errors import first_line


def test_first_line_keeps_what_the_second_line_says_and_cuts_long_messages():
    assert first_line(OSError("Couldn't instantiate the tokenizer from one of:\n  (1) tokenizer.json\n")) == (
        "Couldn't instantiate the tokenizer from one of: (1) tokenizer.json"
    )
    assert first_line(ValueError()) == "ValueError"
    long = first_line(RuntimeError("x" * 1000), limit=50)
    assert len(long) == 50 and long.endswith("...")
