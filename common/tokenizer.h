// Hugging Face tokenizer.json: encode and incremental decode. (Being written; see the tokenizer
// module's brief.)
#pragma once
