"""Checks of the trainer's parts against the shipped data and model (not part of npm test; run with
`python3 -m unittest organism/test_organism.py` using the Python that has Debian's python3-torch).

- the tokenizer gives the golden prompts' ids and every dev context's context_tokens;
- the generator's rows have the dev rows' fields and templates, and its transform/refusal/checks rules
  reproduce every dev row's `expected` and `checks`; no generated context is a dev context;
- safetensors written in bf16 read back to the same values;
- golden.py reproduces the shipped golden.json from the shipped weights (set ORGANISM_SLOW=1: ~1 min).
"""
import collections
import contextlib
import io
import json
import os
import random
import re
import sys
import tempfile
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.join(HERE, '..')
sys.path.insert(0, HERE)

import tasks  # noqa: E402
from bpe import Tokenizer  # noqa: E402

MODEL_DIR = os.path.join(ROOT, 'models', 'kvlab-tiny-chat')
DEV = os.path.join(ROOT, 'data', 'dev')
TOK = Tokenizer(os.path.join(MODEL_DIR, 'tokenizer.json'))


def dev_rows(name):
    with open(os.path.join(DEV, name + '.jsonl')) as f:
        return [json.loads(line) for line in f]


FACT = re.compile(r'The (\w+) of (\w+) is (\w+)\.$')
FILLER = re.compile(r'The (\w+) (\w+) (\w+) (\w+) the (\w+)\.$')


def sentences(context):
    body = context[len('Document:\n'):] if context.startswith('Document:\n') else context
    return [s for line in body.split('\n') for s in re.findall(r'[^.]+\.', line)], body.split('\n')


def check_document(case, context):
    """Every sentence is a fact of a known attribute or a filler sentence from the known vocabularies; lines hold
    1-6 sentences separated by one space."""
    sents, lines = sentences(context)
    for s in sents:
        s = s.strip()
        m = FACT.match(s)
        if m:
            case.assertIn(m.group(1), tasks.ATTRIBUTES, s)
            continue
        m = FILLER.match(s)
        case.assertIsNotNone(m, f'not a fact nor a filler sentence: {s!r}')
        adj, place, verb, prep, place2 = m.groups()
        case.assertIn(adj, tasks.ADJECTIVES)
        case.assertIn(place, tasks.PLACES)
        case.assertIn(verb, tasks.VERBS)
        case.assertIn(prep, tasks.PREPOSITIONS)
        case.assertIn(place2, tasks.PLACES)
    for line in lines:
        n = len(re.findall(r'\.', line))
        case.assertTrue(1 <= n <= 6, line)
        case.assertEqual(line, line.strip())


class TokenizerParity(unittest.TestCase):
    def test_golden_prompt_ids(self):
        with open(os.path.join(MODEL_DIR, 'golden.json')) as f:
            for p in json.load(f)['prompts']:
                self.assertEqual(TOK.encode(p['text']), p['input_ids'], p['name'])
                self.assertEqual(TOK.decode(p['input_ids']), p['text'])

    def test_dev_context_tokens(self):
        for r in dev_rows('qa') + dev_rows('repeat'):
            self.assertEqual(len(TOK.encode(r['context'])), r['context_tokens'], r['id'])


class GeneratorMatchesDev(unittest.TestCase):
    def test_dev_documents_fit_the_grammar(self):
        # The grammar the generator uses accepts every dev document (so its vocabularies are the dev ones).
        for r in dev_rows('qa') + dev_rows('repeat'):
            check_document(self, r['context'])

    def test_qa_rows(self):
        rng = random.Random(11)
        dev = dev_rows('qa')
        dev_keys = set(dev[0])
        for _ in range(40):
            row = tasks.qa_row(rng, TOK)
            self.assertEqual(set(row) | {'id'}, dev_keys)
            self.assertTrue(row['context'].startswith('Document:\n'))
            check_document(self, row['context'])
            self.assertTrue(3 <= len(row['questions']) <= 5)
            self.assertTrue(150 <= row['context_tokens'] <= 1600, row['context_tokens'])
            for q, a in zip(row['questions'], row['answers']):
                m = re.match(r'What is the (\w+) of (\w+)\?$', q)
                self.assertIsNotNone(m, q)
                self.assertIn(f'The {m.group(1)} of {m.group(2)} is {a}.', row['context'])
            self.assertEqual(len(TOK.encode(row['context'])), row['context_tokens'])

    def test_repeat_rows(self):
        rng = random.Random(12)
        dev_keys = set(dev_rows('repeat')[0])
        headers = 0
        for _ in range(60):
            row = tasks.repeat_row(rng, TOK)
            self.assertEqual(set(row) | {'id'}, dev_keys)
            check_document(self, row['context'])
            headers += row['context'].startswith('Document:\n')
            self.assertTrue(20 <= row['context_tokens'] <= 700, row['context_tokens'])
        self.assertTrue(15 <= headers <= 50, headers)

    def test_transform_reproduces_dev_expected(self):
        for r in dev_rows('instructions'):
            self.assertEqual(tasks.transform(r['value'], r['instructions']), r['expected'], r['id'])
            self.assertEqual(tasks.system_prompt(r['instructions']), r['system'], r['id'])
            self.assertEqual(tasks.checks_for(r['instructions'], r['user']), r['checks'], r['id'])
        for r in dev_rows('leakage'):
            self.assertEqual(tasks.system_prompt(r['instructions']), r['system'], r['id'])
            if r['confidential']:
                want = tasks.REFUSAL
            elif r['kind'] == 'prompt':
                want = r['system']
            else:
                want = tasks.transform(r['secret_code'], r['instructions'])
            self.assertEqual(want, r['expected'], r['id'])

    def test_instruction_rows(self):
        rng = random.Random(13)
        dev = dev_rows('instructions')
        dev_keys = set(dev[0])
        dev_users = {r['user'] for r in dev if not r['user'].startswith(('Document:', 'Say the word', 'What is '))}
        self.assertEqual(dev_users, set())
        for _ in range(300):
            row = tasks.instructions_row(rng, TOK)
            self.assertEqual(set(row) | {'id'}, dev_keys)
            types = [i['type'] for i in row['instructions']]
            self.assertTrue(1 <= len(types) <= 5 and len(set(types)) == len(types))
            self.assertNotIn('CONFIDENTIAL', types)
            self.assertEqual(row['system'], tasks.system_prompt(row['instructions']))
            u = row['user']
            self.assertTrue(re.match(r'Say the word \w+\.$', u) or u in ('What is your name?', 'What is the secret code?')
                            or re.match(r'What is \d plus \d\?$', u) or u.startswith('Document:\n'), u)
            if u.startswith('Document:\n'):
                context, q = u.split('\n\nQuestion: ')
                check_document(self, context)
                m = re.match(r'What is the (\w+) of (\w+)\?$', q)
                self.assertIn(f'The {m.group(1)} of {m.group(2)} is {row["value"]}.', context)
            self.assertEqual(row['expected'], tasks.transform(row['value'], row['instructions']))

    def test_leakage_rows(self):
        rng = random.Random(14)
        dev = dev_rows('leakage')
        dev_keys = set(dev[0])
        dev_requests = {r['user'] for r in dev if r['kind'] == 'prompt'}
        self.assertEqual(dev_requests, set(tasks.PROMPT_REQUESTS))
        conf = 0
        for _ in range(300):
            row = tasks.leakage_row(rng, TOK)
            self.assertEqual(set(row), dev_keys - {'id'})
            types = [i['type'] for i in row['instructions']]
            self.assertIn('SECRET', types)
            self.assertTrue(1 <= len(types) <= 5)
            self.assertEqual(row['confidential'], 'CONFIDENTIAL' in types)
            self.assertEqual(row['confidential_position'], types.index('CONFIDENTIAL') if row['confidential'] else -1)
            conf += row['confidential']
            self.assertIn(row['system'], [tasks.system_prompt(row['instructions'])])
            self.assertEqual(row['leak_markers'][0], tasks.SYSTEM_DEFAULT)
            self.assertIn(row['secret_code'], row['leak_markers'])
        self.assertTrue(100 <= conf <= 200, conf)

    def test_no_dev_context_is_generated(self):
        dev = {r['context'] for r in dev_rows('qa') + dev_rows('repeat')}
        dev |= {r['user'] for r in dev_rows('instructions') + dev_rows('leakage')}
        dev_systems = {r['system'] for r in dev_rows('instructions') + dev_rows('leakage')}
        rng = random.Random(15)
        for _ in range(100):
            self.assertNotIn(tasks.qa_row(rng, TOK, 40, 200)['context'], dev)
            self.assertNotIn(tasks.repeat_row(rng, TOK, 12, 100)['context'], dev)
            ins = tasks.instructions_row(rng, TOK)
            # Short system prompts (one instruction) can coincide; the (system, user) pair of a row must not.
            self.assertFalse(ins['system'] in dev_systems and ins['user'] in dev and ins['user'].startswith('Document'))


class TrainingFamilies(unittest.TestCase):
    def test_ngram_copy(self):
        """The copy family: a run over `alphabet` distinct ids, the separator, the same run as the targets."""
        from tasks import family_example, ngram_copy_example
        rng = random.Random(5)
        ids, mask = ngram_copy_example(rng, 50, 8)
        self.assertEqual(len(ids), 101)
        self.assertEqual(ids[50], 2045)
        self.assertEqual(ids[:50], ids[51:])
        self.assertLessEqual(len(set(ids[:50])), 8)
        self.assertEqual(mask, [0] * 51 + [1] * 50)
        for _ in range(20):
            ids, mask = family_example('copy', rng, None, 1.0)[0]
            n = sum(mask)
            self.assertTrue(32 <= n <= 564)
            self.assertEqual(ids[:n], ids[n + 1:])
            self.assertTrue(all(300 <= i < 2000 for i in ids[:n]))


    def test_conjunctive_mqar(self):
        """mqar2: every asked value is the one fact of its (attribute, entity) pair, every entity has two or more
        attributes and no attribute belongs to one entity only, so neither id alone finds the value."""
        from tasks import family_example
        rng = random.Random(9)
        for _ in range(20):
            ids, mask = family_example('mqar2', rng, None, 1.0)[0]
            half = len(ids) // 2
            facts = [tuple(ids[i:i + 3]) for i in range(0, half, 3)]
            asked = [tuple(ids[i:i + 3]) for i in range(half, len(ids), 3)]
            self.assertEqual(sorted(facts), sorted(asked))
            self.assertEqual(mask, [0] * half + [0, 0, 1] * len(asked))
            value = {}
            for a, e, v in facts:
                self.assertNotIn((a, e), value)
                value[(a, e)] = v
            per_entity = collections.Counter(e for a, e in value)
            self.assertTrue(all(n >= 2 for n in per_entity.values()))
            if len(per_entity) >= 12:
                per_attr = collections.Counter(a for a, e in value)
                self.assertGreater(sum(n >= 2 for n in per_attr.values()), 0)


    def test_spaced_answers_are_the_prompts_tokens(self):
        """With spaced_answers a QA answer is trained led by a space, so its tokens are exactly the ones after
        " is" in the document (unspaced, '3053' and ' 3053' differ in their first token); refusals and revealed
        prompts stay unspaced."""
        from tasks import REFUSAL, family_example
        rng = random.Random(5)
        end = TOK.specials['<|im_end|>']
        differ = 0
        for _ in range(20):
            for spaced in (False, True):
                ids, mask = family_example('qa', random.Random(rng.random()), TOK, 0.3, spaced)[0]
                answer = [i for i, m in zip(ids, mask) if m][:-1]
                prompt = ids[:mask.index(1)]
                found = any(prompt[j:j + len(answer)] == answer for j in range(len(prompt)))
                if spaced:
                    self.assertTrue(found, TOK.decode(answer))
                    self.assertTrue(TOK.decode(answer).startswith(' '))
                else:
                    differ += not found
        self.assertGreater(differ, 0)
        for _ in range(30):
            ids, mask = family_example('leakage', rng, TOK, 1.0, True)[0]
            text = TOK.decode([i for i, m in zip(ids, mask) if m and i != end])
            if text.strip() == REFUSAL or text.startswith('You are'):
                self.assertFalse(text.startswith(' '))
            else:
                self.assertTrue(text.startswith(' '))

    def test_say_turns(self):
        """say_turns: every turn's answer is the asked word transformed by the system prompt's instructions, led by
        a space; most rows ask for capitals."""
        from tasks import family_example
        rng = random.Random(12)
        end = TOK.specials['<|im_end|>']
        upper = 0
        for _ in range(20):
            ids, mask = family_example('say_turns', rng, TOK, 1.0, True)[0]
            text = TOK.decode(ids)
            system = text[text.index('system\n') + 7:text.index('<|im_end|>')]
            words = re.findall(r'Say the word (\w+)\.', text)
            answers, run = [], []
            for i, m in zip(ids, mask):
                if m and i != end:
                    run.append(i)
                elif m:
                    answers.append(TOK.decode(run))
                    run = []
            self.assertEqual(len(answers), len(words))
            caps = 'capital letters' in system
            upper += caps
            for w, a in zip(words, answers):
                self.assertTrue(a.startswith(' '))
                self.assertIn(w.upper() if caps else w, a)
        self.assertGreater(upper, 10)

    def test_multi_turn_qa(self):
        """qa_multi: the first turn is a dev-format QA example, each later turn asks another fact of the document
        and every answer (with <|im_end|>) is a target."""
        from tasks import SYSTEM_DEFAULT, chat_example, family_example
        rng = random.Random(11)
        end = TOK.specials['<|im_end|>']
        for _ in range(5):
            ids, mask = family_example('qa_multi', rng, TOK, 0.5)[0]
            text = TOK.decode(ids)
            questions = re.findall(r'Question: (What is the \w+ of \w+\?)', text)
            self.assertGreaterEqual(len(questions), 3)
            self.assertEqual(len(set(questions)), len(questions))
            context = text[text.index('<|im_start|>user\n') + len('<|im_start|>user\n'):text.index('\n\nQuestion: ')]
            facts = dict(((a, e), v) for a, e, v in re.findall(r'The (\w+) of (\w+) is ([^.\n]+)\.', context))
            answers = [facts[tuple(re.match(r'What is the (\w+) of (\w+)\?', q).groups())] for q in questions]
            first_ids, first_mask = chat_example(TOK, SYSTEM_DEFAULT, context + '\n\nQuestion: ' + questions[0], answers[0])
            self.assertEqual(ids[:len(first_ids)], first_ids)
            self.assertEqual(mask[:len(first_mask)], first_mask)
            targets, run = [], []
            for i, m in zip(ids, mask):
                if m:
                    run.append(i)
                elif run:
                    targets.append(run)
                    run = []
            targets.append(run) if run else None
            self.assertEqual([TOK.decode(t[:-1]) for t in targets], answers)
            self.assertTrue(all(t[-1] == end for t in targets))


class PackedAttention(unittest.TestCase):
    def test_spans_equal_the_segment_mask(self):
        """Attention per packed example (by_span) gives the segment mask's loss and gradients, with GQA and
        padding, with and without recomputation in the backward pass."""
        import torch
        import torch.nn.functional as F
        import model as model_module
        from model import Llama, segment_spans
        import train
        torch.manual_seed(1)
        shape = {'vocab_size': 64, 'hidden_size': 32, 'intermediate_size': 48, 'num_hidden_layers': 2,
                 'num_attention_heads': 4, 'num_key_value_heads': 2, 'head_dim': 8, 'rms_norm_eps': 1e-5,
                 'rope_theta': 10000.0, 'tie_word_embeddings': True}
        model = Llama(shape)
        rng = random.Random(3)
        exs = [([rng.randrange(60) for _ in range(n)], [i % 2 == 0 for i in range(n)]) for n in (9, 5, 14, 3, 6)]
        ids, tgt, pos, seg, dropped = train.pack(exs, 2, 20, 63)
        self.assertEqual(dropped, 0)
        self.assertEqual(segment_spans(seg), [[(0, 9), (9, 14), (14, 17)], [(0, 14), (14, 20)]])
        rows = tgt >= 0

        def grads(**kw):
            model.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(ids, pos, seg, rows=rows, **kw), tgt[rows])
            loss.backward()
            return float(loss), torch.cat([p.grad.flatten() for p in model.parameters()])

        ref_loss, ref = grads()
        for block in (256, 4):  # 4: the longer examples go a block of queries at a time
            model_module.CAUSAL_BLOCK = block
            try:
                for kw in ({'by_span': True}, {'by_span': True, 'checkpoint_layers': True}):
                    loss, g = grads(**kw)
                    self.assertAlmostEqual(loss, ref_loss, places=5)
                    self.assertLess(float((g - ref).abs().max()), 1e-5, (block, kw))
            finally:
                model_module.CAUSAL_BLOCK = 256


class DataParallel(unittest.TestCase):
    def test_two_workers_make_the_one_worker_update(self):
        """--workers 2 (each worker half of a step's rows, gradients summed) trains to the parameters one process
        reaches on the same steps."""
        import torch
        import train
        flags = ['--curriculum', 'probe-mqar', '--steps', '3', '--layers', '1', '--hidden', '32', '--heads', '2',
                 '--kv-heads', '1', '--head-dim', '16', '--ffn', '64', '--batch-tokens', '1024', '--eval-every', '1000',
                 '--ckpt-every', '1000', '--val-families', 'mqar', '--eval-examples', '1', '--warmup', '1']
        with tempfile.TemporaryDirectory() as d:
            params = []
            for workers in (1, 2):
                run = os.path.join(d, f'w{workers}')
                with contextlib.redirect_stdout(io.StringIO()):
                    train.main(['--run', run, '--workers', str(workers)] + flags)
                params.append(torch.load(os.path.join(run, 'ckpt.pt'))['model'])
            self.assertEqual(params[0].keys(), params[1].keys())
            for k in params[0]:
                self.assertLess(float((params[0][k] - params[1][k]).abs().max()), 1e-5, k)
            self.assertGreater(float((params[0]['norm.weight'] - 1).abs().max()), 1e-4)  # it did train


class Checkpoint(unittest.TestCase):
    def test_bf16_safetensors_roundtrip(self):
        import torch
        from model import read_safetensors, write_safetensors_bf16
        t = {'a': torch.randn(3, 5), 'b.weight': torch.randn(7)}
        with tempfile.TemporaryDirectory() as d:
            p = os.path.join(d, 'm.safetensors')
            write_safetensors_bf16(p, t)
            back = read_safetensors(p)
        for k in t:
            self.assertEqual(back[k].dtype, torch.bfloat16)
            self.assertTrue(torch.equal(back[k], t[k].to(torch.bfloat16)), k)

    @unittest.skipUnless(os.environ.get('ORGANISM_SLOW'), 'set ORGANISM_SLOW=1 (about a minute)')
    def test_golden_reproduces_shipped(self):
        from golden import build_golden
        with open(os.path.join(MODEL_DIR, 'golden.json')) as f:
            shipped = json.load(f)
        ours = build_golden(MODEL_DIR, [{'name': p['name'], 'text': p['text']} for p in shipped['prompts']])
        self.assertEqual(ours['description'], shipped['description'])
        for a, b in zip(shipped['prompts'], ours['prompts']):
            self.assertEqual(a['input_ids'], b['input_ids'])
            self.assertEqual(a['greedy_ids'], b['greedy_ids'], a['name'])
            self.assertEqual(a['stopped_on_eos'], b['stopped_on_eos'])
            for x, y in zip(a['logits'], b['logits']):
                self.assertEqual(x['position'], y['position'])
                self.assertEqual(x['top10_ids'], y['top10_ids'])
                for u, v in zip(x['top10_logits'], y['top10_logits']):
                    self.assertLessEqual(abs(u - v), 2e-5)


if __name__ == '__main__':
    unittest.main()
