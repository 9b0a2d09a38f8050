#include "coordinator/server/chat_template.h"

#include <filesystem>
#include <fstream>
#include <memory>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace switchyard {
namespace {

using testing::HasSubstr;

class ChatTemplateTest : public testing::Test {
 protected:
  static void SetUpTestSuite() {
    auto tok = Tokenizer::Load(std::string(SWITCHYARD_SOURCE_ROOT) +
                                   "/models/brown-moe/tokenizer.model",
                               1, 2);
    ASSERT_TRUE(tok.ok()) << tok.status();
    tok_ = std::move(tok).value().release();
  }
  static void TearDownTestSuite() { delete tok_; }

  static std::vector<ChatMessage> Conversation() {
    return {{"system", "Be brief."}, {"user", "Who?"}, {"assistant", "The jury."}, {"user", "Why?"}};
  }

  static Tokenizer* tok_;
};
Tokenizer* ChatTemplateTest::tok_ = nullptr;

TEST_F(ChatTemplateTest, MixtralFoldsTheSystemMessageIntoTheFirstTurn) {
  auto p = RenderChat({ChatTemplateKind::kMixtral}, Conversation(), *tok_);
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(p->text, "<s> [INST] Be brief.\n\nWho? [/INST] The jury.</s> [INST] Why? [/INST]");
  // BOS and EOS are ids, never the characters "<s>"; the text between them is encoded per
  // segment.
  std::vector<int32_t> want = {1};
  for (int32_t id : tok_->Encode(" [INST] Be brief.\n\nWho? [/INST] The jury.", false)) {
    want.push_back(id);
  }
  want.push_back(2);
  for (int32_t id : tok_->Encode(" [INST] Why? [/INST]", false)) want.push_back(id);
  EXPECT_EQ(p->token_ids, want);
}

TEST_F(ChatTemplateTest, MixtralV01RefusesASystemMessageAndAlternates) {
  auto p = RenderChat({ChatTemplateKind::kMixtralV01}, Conversation(), *tok_);
  EXPECT_EQ(p.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(p.status().message(), HasSubstr("messages[0].role: the mixtral-v0.1 chat template"));
  const std::vector<ChatMessage> all = Conversation();
  std::vector<ChatMessage> m(all.begin() + 1, all.end());
  p = RenderChat({ChatTemplateKind::kMixtralV01}, m, *tok_);
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(p->text, "<s>[INST] Who? [/INST]The jury.</s>[INST] Why? [/INST]");
  m = {{"user", "a"}, {"user", "b"}};
  p = RenderChat({ChatTemplateKind::kMixtralV01}, m, *tok_);
  EXPECT_THAT(p.status().message(), HasSubstr("messages[1].role: expected \"assistant\""));
  m = {{"assistant", "a"}};
  p = RenderChat({ChatTemplateKind::kMixtral}, m, *tok_);
  EXPECT_THAT(p.status().message(), HasSubstr("messages[0].role: expected \"user\""));
}

TEST_F(ChatTemplateTest, ChatMlEndsWithTheGenerationPrompt) {
  auto p = RenderChat({ChatTemplateKind::kChatMl}, Conversation(), *tok_);
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(p->text,
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWho?<|im_end|>\n"
            "<|im_start|>assistant\nThe jury.<|im_end|>\n<|im_start|>user\nWhy?<|im_end|>\n"
            "<|im_start|>assistant\n");
  // brown-moe has no <|im_start|> piece: the whole prompt is text, encoded once.
  EXPECT_EQ(p->token_ids, tok_->Encode(p->text, false));
}

TEST_F(ChatTemplateTest, RefusalsNameTheField) {
  EXPECT_THAT(RenderChat({ChatTemplateKind::kChatMl}, {}, *tok_).status().message(),
              HasSubstr("messages: at least one message"));
  EXPECT_THAT(RenderChat({ChatTemplateKind::kChatMl}, {{"user", "a"}, {"tool", "b"}}, *tok_)
                  .status()
                  .message(),
              HasSubstr("messages[1].role: unknown role \"tool\""));
  auto none = RenderChat({ChatTemplateKind::kNone, "the model has no chat template"},
                         {{"user", "a"}}, *tok_);
  EXPECT_EQ(none.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(none.status().message(), HasSubstr("chat_template: the model has no chat template"));
}

TEST_F(ChatTemplateTest, NamesParseAndPrint) {
  for (const std::string& name : ChatTemplateNames()) {
    auto kind = ParseChatTemplateName(name);
    ASSERT_TRUE(kind.ok()) << name;
    EXPECT_EQ(ChatTemplateName(*kind), name);
  }
  EXPECT_THAT(ParseChatTemplateName("llama3", "--chat-template").status().message(),
              HasSubstr("--chat-template: unknown chat template \"llama3\"; choose one of "
                        "mixtral, mixtral-v0.1, chatml"));
}

TEST_F(ChatTemplateTest, ACheckpointsTemplateIsRecognisedOrExplained) {
  const std::filesystem::path dir =
      std::filesystem::path(testing::TempDir()) / "chat_template_test_model";
  std::filesystem::create_directories(dir);
  auto config = [&](const std::string& json) { std::ofstream(dir / "tokenizer_config.json") << json; };

  std::filesystem::remove(dir / "tokenizer_config.json");
  auto t = ChatTemplateForModel(dir.string());
  ASSERT_TRUE(t.ok());
  EXPECT_EQ(t->kind, ChatTemplateKind::kNone);
  EXPECT_THAT(t->why_none, HasSubstr("--chat-template mixtral|mixtral-v0.1|chatml"));

  // The template as Mixtral-8x7B-Instruct-v0.1 first shipped it, one line, JSON-escaped.
  config(R"({"chat_template": "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}"})");
  t = ChatTemplateForModel(dir.string());
  ASSERT_TRUE(t.ok());
  EXPECT_EQ(t->kind, ChatTemplateKind::kMixtralV01);

  config(R"({"chat_template": [{"name": "default", "template": "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"}]})");
  t = ChatTemplateForModel(dir.string());
  ASSERT_TRUE(t.ok());
  EXPECT_EQ(t->kind, ChatTemplateKind::kChatMl);

  config(R"({"chat_template": "{{ messages[0]['content'] }}"})");
  t = ChatTemplateForModel(dir.string());
  ASSERT_TRUE(t.ok());
  EXPECT_EQ(t->kind, ChatTemplateKind::kNone);
  EXPECT_THAT(t->why_none, HasSubstr("is not one Switchyard renders"));

  // The flag wins over the checkpoint.
  t = ChatTemplateForModel(dir.string(), "mixtral");
  ASSERT_TRUE(t.ok());
  EXPECT_EQ(t->kind, ChatTemplateKind::kMixtral);

  config("{not json");
  t = ChatTemplateForModel(dir.string());
  EXPECT_EQ(t.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(t.status().message(), HasSubstr("tokenizer_config.json: not a JSON object"));
}

}  // namespace
}  // namespace switchyard
