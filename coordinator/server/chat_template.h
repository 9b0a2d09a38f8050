// Chat templates: a conversation (OpenAI "messages") rendered into the prompt text and token
// ids a chat model was trained on. Built-in renderers, byte-identical to the Jinja templates
// they stand for (rendered as transformers renders them: trim_blocks, lstrip_blocks):
//   mixtral        Mixtral-8x7B-Instruct-v0.1's current template: "<s> [INST] sys\n\nuser
//                  [/INST] answer</s> [INST] ..."; an optional first system message is folded
//                  into the first user turn, as later Mistral templates do.
//   mixtral-v0.1   the template Mixtral-8x7B-Instruct-v0.1 first shipped: "<s>[INST] user
//                  [/INST]answer</s>[INST] ..."; a system message is refused, as it refuses it.
//   chatml         "<|im_start|>role\ncontent<|im_end|>\n" per message, then
//                  "<|im_start|>assistant\n" (the generation prompt).
// There is no general Jinja interpreter: a checkpoint's tokenizer_config.json chat_template is
// recognised when it is one of these (whitespace aside), else chat is refused with a message
// saying how to choose one (`serve --chat-template NAME`).
//
//   ASSIGN_OR_RETURN(ChatTemplate t, ChatTemplateForModel("models/mixtral", flag));
//   ASSIGN_OR_RETURN(ChatPrompt p, RenderChat(t, messages, tokenizer));
//   // p.text: the rendered prompt; p.token_ids: what the model reads
//
// Token ids: special pieces the template writes (bos_token "<s>", eos_token "</s>", and
// "<|im_start|>"/"<|im_end|>" where the vocabulary has them as control pieces) become their
// ids; the text between them is encoded by SentencePiece segment by segment (each segment
// with SentencePiece's leading-space marker, the legacy Llama/Mistral tokenization).
// Pure functions; thread-safe.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "model/tokenizer.h"

namespace switchyard {

enum class ChatTemplateKind { kNone, kMixtral, kMixtralV01, kChatMl };

struct ChatTemplate {
  ChatTemplateKind kind = ChatTemplateKind::kNone;
  // With kNone: why there is no template, for the refusal of a chat request ("the checkpoint
  // has no chat_template ...; start the server with --chat-template mixtral|...").
  std::string why_none;
};

struct ChatMessage {
  std::string role;  // "system", "user" or "assistant"
  std::string content;
};

struct ChatPrompt {
  std::string text;  // the prompt as the template renders it, special pieces spelled out
  std::vector<int32_t> token_ids;
};

// The names --chat-template takes, in the order the help lists them.
const std::vector<std::string>& ChatTemplateNames();
// kInvalidArgument naming `flag` for an unknown name.
absl::StatusOr<ChatTemplateKind> ParseChatTemplateName(const std::string& name,
                                                        const std::string& flag = "chat_template");
std::string ChatTemplateName(ChatTemplateKind kind);  // "none" for kNone

// The template of a checkpoint: `name` when given (the --chat-template flag), else the one
// its `model_dir`/tokenizer_config.json names (chat_template as a string, or the "default" of
// a list of named templates) when it is a built-in one. A checkpoint with no template or an
// unrecognised one gives kNone with `why_none` set: the server still serves completions.
// Errors: kInvalidArgument for an unknown `name` or a tokenizer_config.json that is not JSON
// (naming the file).
absl::StatusOr<ChatTemplate> ChatTemplateForModel(const std::string& model_dir,
                                                  const std::string& name = "");

// The template that `jinja_source` is, whitespace aside; kNone when none.
ChatTemplateKind RecognizeChatTemplate(const std::string& jinja_source);

// Renders `messages` ending with the prompt for the assistant's answer (ChatML's
// add_generation_prompt; the [INST] templates end with " [/INST]" by themselves).
// Errors (kInvalidArgument, naming the field as the OpenAI API does): "messages" (empty),
// "messages[i].role" (not system/user/assistant; a system message the template cannot take;
// roles that do not alternate user/assistant as the [INST] templates require),
// "chat_template" (kNone: `why_none`).
absl::StatusOr<ChatPrompt> RenderChat(const ChatTemplate& chat_template,
                                      const std::vector<ChatMessage>& messages,
                                      const Tokenizer& tokenizer);

}  // namespace switchyard
