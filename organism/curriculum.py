"""Curricula: lists of stages, each active until its `until` step, with a family mix (relative weights), a
`scale` for the length of the long families (1.0 = the dev lengths) and optionally its own row length.

`main`: dense multi-query associative recall first (raw-id MQAR, and fact-document recall with every answer
supervised, plus short copies), then the chat families at growing lengths, keeping recall rows to the end; from step 5,750 raw-id copies over small
alphabets (`copy`), added after step 5,325's copies were right 95 % of the time where the previous token occurs
once in the prompt and 58 % where it occurs more than 10 times (results/README.md, Issue 26); from step 6,300
recall by a pair of raw ids (`mqar2`), after step 5,850 answered 0 of 17 dev questions with a value of the right
kind but the wrong fact: a QA fact is found by attribute and entity together; from step 7,650 multi-turn QA
(`qa_multi`: 6-14 questions of one document, each in its own user turn), after step 7,375 answered 2 of 32 dev
questions, 25 of them with a value found nowhere in the document: a dev QA example has 3-5 target tokens for
~1,000 tokens of document, too little signal for finding a value from a question asked in the user turn.
The probe curricula train one skill alone, to measure how fast a shape learns it.
"""

CURRICULA = {
    'main': [
        {'name': 'recall', 'until': 1000, 'scale': 0.15, 'seq_len': 256,
         'mix': {'mqar': 0.4, 'recall': 0.35, 'repeat': 0.25}},
        {'name': 'chat-short', 'until': 3000, 'scale': 0.3, 'seq_len': 512,
         'mix': {'mqar': 0.1, 'recall': 0.2, 'repeat': 0.25, 'qa': 0.15, 'instructions': 0.15, 'leakage': 0.15}},
        {'name': 'chat-mid', 'until': 5500, 'scale': 0.6, 'seq_len': 1024,
         'mix': {'mqar': 0.05, 'recall': 0.15, 'repeat': 0.25, 'qa': 0.2, 'instructions': 0.175, 'leakage': 0.175}},
        {'name': 'chat-full', 'until': 5750, 'scale': 1.0, 'seq_len': 1700,
         'mix': {'mqar': 0.05, 'recall': 0.1, 'repeat': 0.25, 'qa': 0.25, 'instructions': 0.175, 'leakage': 0.175}},
        {'name': 'chat-full-copy', 'until': 6300, 'scale': 1.0, 'seq_len': 1700,
         'mix': {'mqar': 0.05, 'recall': 0.05, 'copy': 0.1, 'repeat': 0.2, 'qa': 0.25, 'instructions': 0.175,
                 'leakage': 0.175}},
        {'name': 'chat-full-pairs', 'until': 7650, 'scale': 1.0, 'seq_len': 1700,
         'mix': {'mqar': 0.05, 'mqar2': 0.1, 'recall': 0.05, 'copy': 0.1, 'repeat': 0.15, 'qa': 0.25, 'instructions': 0.175,
                 'leakage': 0.125}},
        {'name': 'chat-full-turns', 'until': 10200, 'scale': 1.0, 'seq_len': 1700,
         'mix': {'mqar': 0.05, 'mqar2': 0.05, 'recall': 0.05, 'copy': 0.1, 'repeat': 0.15, 'qa': 0.1, 'qa_multi': 0.2,
                 'instructions': 0.175, 'leakage': 0.125}},
        {'name': 'qa-short', 'until': 10650, 'scale': 0.3, 'seq_len': 512,
         'mix': {'mqar2': 0.05, 'recall': 0.1, 'copy': 0.05, 'repeat': 0.1, 'qa': 0.1, 'qa_multi': 0.35,
                 'instructions': 0.15, 'leakage': 0.1}},
        {'name': 'qa-short-spaced', 'until': 11300, 'scale': 0.3, 'seq_len': 512, 'spaced_answers': True,
         'mix': {'mqar': 0.03, 'mqar2': 0.05, 'recall': 0.07, 'copy': 0.05, 'repeat': 0.1, 'qa': 0.1, 'qa_multi': 0.35,
                 'instructions': 0.15, 'leakage': 0.1}},
        {'name': 'qa-mid-spaced', 'until': 11800, 'scale': 0.6, 'seq_len': 1024, 'spaced_answers': True,
         'mix': {'mqar': 0.03, 'mqar2': 0.05, 'recall': 0.07, 'copy': 0.05, 'repeat': 0.1, 'qa': 0.1, 'qa_multi': 0.3,
                 'instructions': 0.175, 'leakage': 0.125}},
        {'name': 'qa-full-spaced', 'until': 13500, 'scale': 1.0, 'seq_len': 1700, 'spaced_answers': True,
         'mix': {'mqar': 0.05, 'mqar2': 0.05, 'recall': 0.05, 'copy': 0.1, 'repeat': 0.15, 'qa': 0.1, 'qa_multi': 0.2,
                 'instructions': 0.175, 'leakage': 0.125}},
        {'name': 'full-capitals', 'until': 10 ** 9, 'scale': 1.0, 'seq_len': 1700, 'spaced_answers': True,
         'mix': {'mqar': 0.03, 'mqar2': 0.04, 'recall': 0.05, 'copy': 0.1, 'repeat': 0.15, 'qa': 0.1, 'qa_multi': 0.2,
                 'instructions': 0.14, 'say_turns': 0.07, 'leakage': 0.12}},
    ],
    'probe-mqar': [
        {'name': 'mqar', 'until': 10 ** 9, 'scale': 0.25, 'seq_len': 256, 'mix': {'mqar': 1.0}},
    ],
    'probe-recall': [
        {'name': 'recall', 'until': 10 ** 9, 'scale': 0.15, 'seq_len': 256, 'mix': {'recall': 1.0}},
    ],
    'probe-repeat': [
        {'name': 'repeat', 'until': 10 ** 9, 'scale': 0.15, 'seq_len': 256, 'mix': {'repeat': 1.0}},
    ],
}


def stage_at(curriculum, step):
    for stage in curriculum:
        if step < stage['until']:
            return stage
    return curriculum[-1]


def spaced_answers_at(curriculum, step):
    """Whether the stage training `step` writes answers led by a space (the stage's `spaced_answers`)."""
    return stage_at(curriculum, step).get('spaced_answers', False)
