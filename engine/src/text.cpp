// Token bytes -> released text, shared by the generation loops; token texts compared as text.
#include "internal.h"

#include <algorithm>
#include <cctype>

namespace cg {

std::string token_piece(const cg_model * model, cg_token token) {
    char buf[256];
    const int32_t n = cg_token_to_piece(model, token, false, buf, sizeof buf);
    if (n <= 0) return {};
    if (n <= (int32_t) sizeof buf) return std::string(buf, (size_t) n);
    std::string big((size_t) n, '\0');
    cg_token_to_piece(model, token, false, &big[0], n);
    return big;
}

const std::vector<int32_t> & text_classes(const cg_model * model) {
    std::call_once(model->text_classes_once, [model] {
        const int32_t n_vocab = cg_model_n_vocab(model);
        std::unordered_map<std::string, int32_t> class_of;
        model->text_classes.assign((size_t) n_vocab, -1);
        for (cg_token t = 0; t < n_vocab; ++t) {
            std::string key;
            for (const unsigned char c : token_piece(model, t)) {  // ASCII case and spacing only: bytes of UTF-8 stay
                if (!std::isspace(c)) key.push_back((char) std::tolower(c));
            }
            if (key.empty()) continue;
            model->text_classes[(size_t) t] = class_of.emplace(key, (int32_t) class_of.size()).first->second;
        }
    });
    return model->text_classes;
}

size_t complete_utf8_len(const std::string & s) {
    const size_t n = s.size();
    for (size_t back = 1; back <= 4 && back <= n; ++back) {
        const unsigned char c = (unsigned char) s[n - back];
        if ((c & 0xC0) == 0x80) continue;  // continuation byte: keep looking for the lead
        const size_t need = c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC0 ? 2 : 1;
        return need > back ? n - back : n;
    }
    return n;
}

void TextRelease::release(size_t n_bytes) {
    released.append(pending, 0, n_bytes);
    text.append(pending, 0, n_bytes);
    pending.erase(0, n_bytes);
}

void TextRelease::flush() {
    if (!stopped) release(pending.size());
}

void TextRelease::add(const std::string & piece) {
    if (stopped) return;
    pending += piece;
    const size_t ready = complete_utf8_len(pending);
    if (stops.empty()) { release(ready); return; }
    // Search the tail of the released text joined with the ready bytes.
    size_t longest = 0;
    for (const auto & st : stops) longest = std::max(longest, st.size());
    const size_t tail = std::min(text.size(), longest - 1);
    const std::string window = text.substr(text.size() - tail) + pending.substr(0, ready);
    size_t hit = std::string::npos;
    for (const auto & st : stops) hit = std::min(hit, window.find(st));
    if (hit != std::string::npos) {
        release(hit > tail ? hit - tail : 0);
        pending.clear();
        stopped = true;
        return;
    }
    // Hold back the longest suffix that is a prefix of some stop string.
    size_t hold = 0;
    for (const auto & st : stops) {
        for (size_t k = std::min(st.size() - 1, ready); k > hold; --k) {
            if (window.compare(window.size() - k, k, st, 0, k) == 0) { hold = k; break; }
        }
    }
    release(ready - hold);
}

}  // namespace cg
