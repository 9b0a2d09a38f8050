// The official OpenAI client for Node against a running Switchyard HTTP server: prints what
// it received as one JSON object (tests/openai_node_test.py checks it).
//   node tests/node/openai_client_test.mjs PORT TOKEN
import OpenAI from 'openai';

const [port, token] = process.argv.slice(2);
const baseURL = `http://127.0.0.1:${port}/v1`;
const client = new OpenAI({ baseURL, apiKey: token, maxRetries: 0, timeout: 120000 });
const model = 'brown-moe';
const prompt = 'The jury said that';
const messages = [{ role: 'user', content: 'Who was on the jury?' }];
const out = {};

async function refusal(fn) {
  try {
    await fn();
    return 'accepted';
  } catch (e) {
    return { status: e.status, param: e.param ?? null, type: e.type ?? null, message: e.message };
  }
}

out.models = (await client.models.list()).data.map((m) => m.id);
const c = await client.completions.create({ model, prompt, max_tokens: 16, temperature: 0 });
out.completion = c.choices[0].text;
out.completion_finish = c.choices[0].finish_reason;
out.usage = c.usage;
let text = '';
for await (const chunk of await client.completions.create({
  model, prompt, max_tokens: 16, temperature: 0, stream: true,
})) {
  text += chunk.choices[0]?.text ?? '';
}
out.completion_stream = text;

const chat = await client.chat.completions.create({ model, messages, max_tokens: 12, temperature: 0 });
out.chat = chat.choices[0].message.content;
out.chat_role = chat.choices[0].message.role;
let chatText = '';
let usage = null;
for await (const chunk of await client.chat.completions.create({
  model, messages, max_tokens: 12, temperature: 0, stream: true,
  stream_options: { include_usage: true },
})) {
  chatText += chunk.choices[0]?.delta?.content ?? '';
  if (chunk.usage) usage = chunk.usage;
}
out.chat_stream = chatText;
out.chat_stream_usage = usage;

out.n2 = await refusal(() => client.completions.create({ model, prompt, n: 2 }));
out.unknown_model = await refusal(() => client.completions.create({ model: 'gpt-4', prompt }));
out.bad_key = await refusal(() =>
  new OpenAI({ baseURL, apiKey: 'wrong', maxRetries: 0 }).models.list());
console.log(JSON.stringify(out));
