#include "coordinator/server/chat_template.h"

#include <filesystem>
#include <nlohmann/json.hpp>
#include <optional>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/files.h"

namespace switchyard {
namespace {

// The Jinja sources each renderer stands for, as checkpoints ship them (recognised with
// whitespace removed).
constexpr char kMixtralSource[] = R"j({%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content'] %}
    {%- set loop_messages = messages[1:] %}
{%- else %}
    {%- set loop_messages = messages %}
{%- endif %}

{{- bos_token }}
{%- for message in loop_messages %}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}
        {{- raise_exception('After the optional system message, conversation roles must alternate user/assistant/user/assistant/...') }}
    {%- endif %}
    {%- if message['role'] == 'user' %}
        {%- if loop.first and system_message is defined %}
            {{- ' [INST] ' + system_message + '\n\n' + message['content'] + ' [/INST]' }}
        {%- else %}
            {{- ' [INST] ' + message['content'] + ' [/INST]' }}
        {%- endif %}
    {%- elif message['role'] == 'assistant' %}
        {{- ' ' + message['content'] + eos_token}}
    {%- else %}
        {{- raise_exception('Only user and assistant roles are supported, with the exception of an initial optional system message!') }}
    {%- endif %}
{%- endfor %}
)j";

constexpr char kMixtralV01Source[] =
    "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != "
    "(loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate "
    "user/assistant/user/assistant/...') }}{% endif %}{% if message['role'] == 'user' %}{{ "
    "'[INST] ' + message['content'] + ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ "
    "message['content'] + eos_token}}{% else %}{{ raise_exception('Only user and assistant roles "
    "are supported!') }}{% endif %}{% endfor %}";

constexpr char kChatMlSource[] =
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + "
    "message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ "
    "'<|im_start|>assistant\\n' }}{% endif %}";

std::string WithoutWhitespace(const std::string& s) {
  std::string out;
  out.reserve(s.size());
  for (char c : s) {
    if (!absl::ascii_isspace(static_cast<unsigned char>(c))) out.push_back(c);
  }
  return out;
}

absl::Status Invalid(const std::string& field, const std::string& problem) {
  return absl::InvalidArgumentError(absl::StrCat(field, ": ", problem));
}

std::string RoleField(size_t i) { return absl::StrCat("messages[", i, "].role"); }

// The prompt being rendered: text, and special pieces that become their own ids.
class PromptWriter {
 public:
  explicit PromptWriter(const Tokenizer& tok) : tok_(tok) {}

  void Text(const std::string& s) {
    prompt_.text += s;
    pending_ += s;
  }
  // A special piece: its id when the vocabulary has it as a control piece, else plain text.
  void Special(const std::string& piece) {
    const std::optional<int32_t> id = tok_.ControlId(piece);
    if (!id.has_value()) return Text(piece);
    FlushText();
    prompt_.text += piece;
    prompt_.token_ids.push_back(*id);
  }
  void Bos() { Id(tok_.bos_id()); }
  void Eos() { Id(tok_.eos_id()); }

  ChatPrompt Finish() {
    FlushText();
    return std::move(prompt_);
  }

 private:
  void Id(int32_t id) {
    FlushText();
    prompt_.text += tok_.Piece(id);
    prompt_.token_ids.push_back(id);
  }
  void FlushText() {
    if (pending_.empty()) return;
    std::vector<int32_t> ids = tok_.Encode(pending_, /*add_bos=*/false);
    prompt_.token_ids.insert(prompt_.token_ids.end(), ids.begin(), ids.end());
    pending_.clear();
  }

  const Tokenizer& tok_;
  ChatPrompt prompt_;
  std::string pending_;  // text not yet encoded (one segment between special pieces)
};

// The [INST] templates: user and assistant turns alternate, starting with a user turn
// (after the optional system message `fold_system` allows).
absl::StatusOr<ChatPrompt> RenderInst(const std::vector<ChatMessage>& messages, bool current,
                                      const Tokenizer& tok) {
  size_t first = 0;
  std::optional<std::string> system;
  if (messages[0].role == "system") {
    if (!current) {
      return Invalid(RoleField(0),
                     "the mixtral-v0.1 chat template has no system role (only user and "
                     "assistant); fold it into the first user message, or serve with "
                     "--chat-template mixtral, which does");
    }
    system = messages[0].content;
    first = 1;
  }
  PromptWriter w(tok);
  w.Bos();
  for (size_t i = first; i < messages.size(); ++i) {
    const ChatMessage& m = messages[i];
    const bool want_user = (i - first) % 2 == 0;
    if (m.role != "user" && m.role != "assistant") {
      return Invalid(RoleField(i),
                     absl::StrCat("\"", m.role, "\" is not allowed here; the ",
                                  current ? "mixtral" : "mixtral-v0.1",
                                  " chat template takes user and assistant messages",
                                  current ? " after an optional first system message" : ""));
    }
    if ((m.role == "user") != want_user) {
      return Invalid(RoleField(i), absl::StrCat("expected \"", want_user ? "user" : "assistant",
                                                "\", got \"", m.role,
                                                "\": roles must alternate user/assistant",
                                                current ? " after the optional system message" : "",
                                                ", starting with user"));
    }
    if (m.role == "user") {
      const std::string content =
          (system.has_value() && i == first) ? absl::StrCat(*system, "\n\n", m.content) : m.content;
      w.Text(absl::StrCat(current ? " [INST] " : "[INST] ", content, " [/INST]"));
    } else {
      w.Text(current ? absl::StrCat(" ", m.content) : m.content);
      w.Eos();
    }
  }
  return w.Finish();
}

absl::StatusOr<ChatPrompt> RenderChatMl(const std::vector<ChatMessage>& messages,
                                        const Tokenizer& tok) {
  PromptWriter w(tok);
  for (const ChatMessage& m : messages) {
    w.Special("<|im_start|>");
    w.Text(absl::StrCat(m.role, "\n", m.content));
    w.Special("<|im_end|>");
    w.Text("\n");
  }
  w.Special("<|im_start|>");
  w.Text("assistant\n");
  return w.Finish();
}

}  // namespace

const std::vector<std::string>& ChatTemplateNames() {
  static const auto* names = new std::vector<std::string>{"mixtral", "mixtral-v0.1", "chatml"};
  return *names;
}

absl::StatusOr<ChatTemplateKind> ParseChatTemplateName(const std::string& name,
                                                        const std::string& flag) {
  if (name == "mixtral") return ChatTemplateKind::kMixtral;
  if (name == "mixtral-v0.1") return ChatTemplateKind::kMixtralV01;
  if (name == "chatml") return ChatTemplateKind::kChatMl;
  return Invalid(flag, absl::StrCat("unknown chat template \"", name, "\"; choose one of ",
                                    absl::StrJoin(ChatTemplateNames(), ", ")));
}

std::string ChatTemplateName(ChatTemplateKind kind) {
  switch (kind) {
    case ChatTemplateKind::kMixtral:
      return "mixtral";
    case ChatTemplateKind::kMixtralV01:
      return "mixtral-v0.1";
    case ChatTemplateKind::kChatMl:
      return "chatml";
    case ChatTemplateKind::kNone:
      break;
  }
  return "none";
}

ChatTemplateKind RecognizeChatTemplate(const std::string& jinja_source) {
  const std::string s = WithoutWhitespace(jinja_source);
  if (s == WithoutWhitespace(kMixtralSource)) return ChatTemplateKind::kMixtral;
  if (s == WithoutWhitespace(kMixtralV01Source)) return ChatTemplateKind::kMixtralV01;
  if (s == WithoutWhitespace(kChatMlSource)) return ChatTemplateKind::kChatMl;
  return ChatTemplateKind::kNone;
}

absl::StatusOr<ChatTemplate> ChatTemplateForModel(const std::string& model_dir,
                                                  const std::string& name) {
  if (!name.empty()) {
    absl::StatusOr<ChatTemplateKind> kind = ParseChatTemplateName(name, "chat_template");
    if (!kind.ok()) return kind.status();
    return ChatTemplate{.kind = *kind};
  }
  const std::string how = absl::StrCat("start the server with --chat-template ",
                                       absl::StrJoin(ChatTemplateNames(), "|"));
  const std::string path = (std::filesystem::path(model_dir) / "tokenizer_config.json").string();
  std::error_code ec;
  if (!std::filesystem::exists(path, ec)) {
    return ChatTemplate{.why_none = absl::StrCat("the model has no chat template (no ", path,
                                                 "); ", how)};
  }
  absl::StatusOr<std::string> text = ReadFileToString(path, "tokenizer config");
  if (!text.ok()) return text.status();
  const nlohmann::json config = nlohmann::json::parse(*text, nullptr, /*allow_exceptions=*/false);
  if (config.is_discarded() || !config.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": not a JSON object"));
  }
  std::optional<std::string> source;
  if (auto it = config.find("chat_template"); it != config.end()) {
    if (it->is_string()) {
      source = it->get<std::string>();
    } else if (it->is_array()) {  // [{"name": "default", "template": "..."}, ...]
      for (const nlohmann::json& t : *it) {
        if (t.is_object() && t.contains("name") && t["name"] == "default" &&
            t.contains("template") && t["template"].is_string()) {
          source = t["template"].get<std::string>();
        }
      }
    }
  }
  if (!source.has_value()) {
    return ChatTemplate{.why_none = absl::StrCat("the model has no chat template (", path,
                                                 " has no chat_template); ", how)};
  }
  const ChatTemplateKind kind = RecognizeChatTemplate(*source);
  if (kind == ChatTemplateKind::kNone) {
    return ChatTemplate{.why_none = absl::StrCat(
                            "the chat_template of ", path,
                            " is not one Switchyard renders (it has no general Jinja "
                            "interpreter); if the model follows one of its templates, ",
                            how)};
  }
  return ChatTemplate{.kind = kind};
}

absl::StatusOr<ChatPrompt> RenderChat(const ChatTemplate& chat_template,
                                      const std::vector<ChatMessage>& messages,
                                      const Tokenizer& tokenizer) {
  if (chat_template.kind == ChatTemplateKind::kNone) {
    return Invalid("chat_template", chat_template.why_none.empty()
                                        ? "the server has no chat template"
                                        : chat_template.why_none);
  }
  if (messages.empty()) return Invalid("messages", "at least one message is required");
  for (size_t i = 0; i < messages.size(); ++i) {
    const std::string& role = messages[i].role;
    if (role != "system" && role != "user" && role != "assistant") {
      return Invalid(RoleField(i), absl::StrCat("unknown role \"", role,
                                                "\"; Switchyard takes system, user and "
                                                "assistant messages"));
    }
  }
  switch (chat_template.kind) {
    case ChatTemplateKind::kMixtral:
      return RenderInst(messages, /*current=*/true, tokenizer);
    case ChatTemplateKind::kMixtralV01:
      return RenderInst(messages, /*current=*/false, tokenizer);
    case ChatTemplateKind::kChatMl:
      return RenderChatMl(messages, tokenizer);
    case ChatTemplateKind::kNone:
      break;
  }
  return absl::InternalError("unreachable");
}

}  // namespace switchyard
