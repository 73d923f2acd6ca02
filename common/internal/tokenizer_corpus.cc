#include "common/internal/tokenizer_corpus.h"

namespace switchyard::tokenizer_internal {

// Changing this text changes every made tokenizer: regenerate tests/data/tokenizer afterwards.
std::string_view MakerCorpus() {
  static constexpr char kCorpus[] =
      R"CORPUS(The switchyard sorts the trains at night. Each wagon is routed to the track where its train waits, and the experts of the model are routed the same way: every token goes to the few experts that know it best.
It's a quiet place. The workers don't talk much; they're busy, and we've learned that they'll answer when the shift is over. I'm told the old signal box has stood there since 1911, and it still works.
When the weather is bad, the night shift starts at 22:00 and ends at 06:30. In 2023 the yard handled 1,250,000 wagons, about 3,424 per day, with 17 locomotives and 245 people.
Good models need good data, and good data needs careful reading. The reader checks the numbers twice: 3.14159, 2.71828, 1.41421, 42, 100, 1000, 65536, 4096, 8192.
Der Rangierbahnhof liegt am Fluss. Die Züge fahren über die Brücke, und die Wagen werden nach Größe und Gewicht sortiert. Müller und Schäfer arbeiten in der Nachtschicht; sie können schön singen, aber sie hören selten zu.
Über den Gleisen hängt eine Uhr. Jeder Fahrgast möchte pünktlich ankommen, doch die Verspätung beträgt heute fünfzehn Minuten. Grüße aus Köln, Düsseldorf und München!
Öffentliche Verkehrsmittel sind für die Umwelt gut. Äpfel, Birnen und Nüsse werden auf dem Markt verkauft; die Straße ist voller Menschen.
铁路编组站在夜里很安静。每一节车厢都被送到正确的轨道上，专家模型也是这样工作的：每个词都会被送到最懂它的几个专家那里。
我们今天去北京，明天去上海。天气很好，大家都很高兴。中文的句子没有空格，所以分词需要学习常见的字和词语。
学习语言需要时间和耐心。我们的模型会读很多书，也会写很多字。你好，世界！谢谢你的帮助。
Emoji time: 😀 😃 😄 👍 👍🏽 👍🏿 ❤️ 🎉 🚂 🚃 🚄 👨‍👩‍👧‍👦 👩‍💻 🏳️‍🌈 🇩🇪 🇨🇳 ✨ 🔥 ✅
def route(tokens, experts, top_k=2):
    scores = [expert.score(t) for t in tokens for expert in experts]
    return sorted(scores, reverse=True)[:top_k]

for (int i = 0; i < num_tokens; ++i) {
  out[i] = weights[i] * values[i] + bias;
}
if (x != nullptr && y >= 0) { return std::max(x->size(), y); }
{"id": 12, "name": "wagon", "weight_kg": 24500, "tags": ["cargo", "blue"]}
Mixed text: English, Deutsch, 中文, and emoji 🙂 in one line. She said: "We're here!" He asked, 'Isn't it late?'
Numbers again: 0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 99 123 256 512 1024 2048 2024-01-15 12:34:56
The end of the line is near; the last train leaves at midnight, and the yard sleeps until dawn.
)CORPUS";
  return std::string_view(kCorpus, sizeof(kCorpus) - 1);
}

}  // namespace switchyard::tokenizer_internal
