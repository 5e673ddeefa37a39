//! Built-in chat templates, written as Jinja to produce exactly what llama.cpp's hand-written
//! formatter (`llm_chat_apply_template` in llama.cpp's `src/llama-chat.cpp`) produces for the
//! same names, and llama.cpp's heuristics (`llm_chat_detect_template`) for naming the family of
//! a model's own template. Like llama.cpp's, these never emit BOS: the caller adds it as the
//! vocabulary asks (`tokenizer.ggml.add_bos_token`).

/// Names accepted by `--chat-template` (besides a file path), in the order help lists them.
pub const BUILTIN_NAMES: &[&str] =
    &["chatml", "llama2", "llama2-sys", "llama3", "mistral", "mistral-v7", "mistral-v7-tekken", "gemma", "phi3", "phi4", "zephyr"];

/// llama-chat.cpp, LLM_CHAT_TEMPLATE_CHATML:
/// `<|im_start|>{role}\n{content}<|im_end|>\n` per message, then `<|im_start|>assistant\n`.
const CHATML: &str = r#"
{%- for message in messages -%}
{{- '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' -}}
{%- endfor -%}
{%- if add_generation_prompt -%}
{{- '<|im_start|>assistant\n' -}}
{%- endif -%}
"#;

/// llama-chat.cpp, LLM_CHAT_TEMPLATE_LLAMA_2 (`sys` false) and LLAMA_2_SYS (`sys` true): the
/// prompt opens with `[INST] ` (BOS comes from the tokenizer); a system message is
/// `<<SYS>>\n{content}\n<</SYS>>\n\n` (without `<<SYS>>`: `{content}\n`), a user message
/// `{content} [/INST]`, an assistant message `{content}</s>` after which the next message
/// reopens with `[INST] `. No generation prompt.
fn llama2(sys: bool) -> String {
    let system = if sys { r#"'<<SYS>>\n' + message['content'] + '\n<</SYS>>\n\n'"# } else { r#"message['content'] + '\n'"# };
    format!(
        r#"
{{%- set ns = namespace(inside_turn=true) -%}}
{{{{- '[INST] ' -}}}}
{{%- for message in messages -%}}
{{%- if not ns.inside_turn -%}}
{{{{- '[INST] ' -}}}}
{{%- set ns.inside_turn = true -%}}
{{%- endif -%}}
{{%- if message['role'] == 'system' -%}}
{{{{- {system} -}}}}
{{%- elif message['role'] == 'user' -%}}
{{{{- message['content'] + ' [/INST]' -}}}}
{{%- else -%}}
{{{{- message['content'] + '</s>' -}}}}
{{%- set ns.inside_turn = false -%}}
{{%- endif -%}}
{{%- endfor -%}}
"#
    )
}

/// llama-chat.cpp, LLM_CHAT_TEMPLATE_LLAMA_3:
/// `<|start_header_id|>{role}<|end_header_id|>\n\n{trim(content)}<|eot_id|>` per message, then
/// `<|start_header_id|>assistant<|end_header_id|>\n\n`.
const LLAMA3: &str = r#"
{%- for message in messages -%}
{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' -}}
{%- endfor -%}
{%- if add_generation_prompt -%}
{{- '<|start_header_id|>assistant<|end_header_id|>\n\n' -}}
{%- endif -%}
"#;

/// llama-chat.cpp, LLM_CHAT_TEMPLATE_MISTRAL_V7 (`sp` = " ") and MISTRAL_V7_TEKKEN (`sp` = ""):
/// `[SYSTEM_PROMPT]{sp}{content}[/SYSTEM_PROMPT]`, `[INST]{sp}{content}[/INST]`, and for the
/// assistant `{sp}{content}</s>`. No generation prompt.
fn mistral_v7(sp: &str) -> String {
    format!(
        r#"
{{%- for message in messages -%}}
{{%- if message['role'] == 'system' -%}}
{{{{- '[SYSTEM_PROMPT]{sp}' + message['content'] + '[/SYSTEM_PROMPT]' -}}}}
{{%- elif message['role'] == 'user' -%}}
{{{{- '[INST]{sp}' + message['content'] + '[/INST]' -}}}}
{{%- else -%}}
{{{{- '{sp}' + message['content'] + '</s>' -}}}}
{{%- endif -%}}
{{%- endfor -%}}
"#
    )
}

/// llama-chat.cpp, LLM_CHAT_TEMPLATE_GEMMA: system messages are trimmed and collected, then
/// put in front of the next non-model turn followed by `\n\n`; a turn is
/// `<start_of_turn>{role}\n{trim(content)}<end_of_turn>\n` with `assistant` spelled `model`;
/// then `<start_of_turn>model\n`.
const GEMMA: &str = r#"
{%- set ns = namespace(system='') -%}
{%- for message in messages -%}
{%- if message['role'] == 'system' -%}
{%- set ns.system = ns.system + message['content'] | trim -%}
{%- else -%}
{%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}
{{- '<start_of_turn>' + role + '\n' -}}
{%- if ns.system != '' and role != 'model' -%}
{{- ns.system + '\n\n' -}}
{%- set ns.system = '' -%}
{%- endif -%}
{{- message['content'] | trim + '<end_of_turn>\n' -}}
{%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}
{{- '<start_of_turn>model\n' -}}
{%- endif -%}
"#;

/// llama-chat.cpp, LLM_CHAT_TEMPLATE_PHI_3: `<|{role}|>\n{content}<|end|>\n`, then `<|assistant|>\n`.
const PHI3: &str = r#"
{%- for message in messages -%}
{{- '<|' + message['role'] + '|>\n' + message['content'] + '<|end|>\n' -}}
{%- endfor -%}
{%- if add_generation_prompt -%}
{{- '<|assistant|>\n' -}}
{%- endif -%}
"#;

/// llama-chat.cpp, LLM_CHAT_TEMPLATE_PHI_4: `<|im_start|>{role}<|im_sep|>{content}<|im_end|>`,
/// then `<|im_start|>assistant<|im_sep|>`.
const PHI4: &str = r#"
{%- for message in messages -%}
{{- '<|im_start|>' + message['role'] + '<|im_sep|>' + message['content'] + '<|im_end|>' -}}
{%- endfor -%}
{%- if add_generation_prompt -%}
{{- '<|im_start|>assistant<|im_sep|>' -}}
{%- endif -%}
"#;

/// llama-chat.cpp, LLM_CHAT_TEMPLATE_ZEPHYR: `<|{role}|>\n{content}<|endoftext|>\n`, then
/// `<|assistant|>\n`.
const ZEPHYR: &str = r#"
{%- for message in messages -%}
{{- '<|' + message['role'] + '|>\n' + message['content'] + '<|endoftext|>\n' -}}
{%- endfor -%}
{%- if add_generation_prompt -%}
{{- '<|assistant|>\n' -}}
{%- endif -%}
"#;

/// The Jinja source of a built-in template, and its canonical name (`mistral` is `mistral-v7`).
pub fn source(name: &str) -> Option<(&'static str, String)> {
    let canonical = if name == "mistral" { "mistral-v7" } else { BUILTIN_NAMES.iter().find(|n| **n == name)? };
    Some(match name {
        "chatml" => (canonical, CHATML.to_string()),
        "llama2" => (canonical, llama2(false)),
        "llama2-sys" => (canonical, llama2(true)),
        "llama3" => (canonical, LLAMA3.to_string()),
        "mistral" | "mistral-v7" => (canonical, mistral_v7(" ")),
        "mistral-v7-tekken" => (canonical, mistral_v7("")),
        "gemma" => (canonical, GEMMA.to_string()),
        "phi3" => (canonical, PHI3.to_string()),
        "phi4" => (canonical, PHI4.to_string()),
        "zephyr" => (canonical, ZEPHYR.to_string()),
        _ => return None,
    })
}

/// Which built-in format a template's text looks like, by llama.cpp's heuristics
/// (`llm_chat_detect_template`, restricted to the formats built in here). Informational only:
/// ferrite always renders the model's own template, never the look-alike.
pub fn detect_family(tmpl: &str) -> Option<&'static str> {
    let has = |s: &str| tmpl.contains(s);
    if has("<|im_start|>") {
        if has("<|im_sep|>") {
            return Some("phi4");
        }
        return (!has("<end_of_utterance>")).then_some("chatml");
    }
    if tmpl.starts_with("mistral") || has("[INST]") {
        if has("[SYSTEM_PROMPT]") {
            return Some("mistral-v7");
        }
        if has("' [INST] ' + system_message") || has("[AVAILABLE_TOOLS]") {
            return None; // mistral v1/v3, not built in
        }
        return Some(if has("<<SYS>>") { "llama2-sys" } else { "llama2" });
    }
    if has("<|assistant|>") && has("<|end|>") {
        return Some("phi3");
    }
    if has("<|assistant|>") && has("<|user|>") {
        return None; // falcon3, glm-edge, exaone: not built in
    }
    if has("<|user|>") && has("<|endoftext|>") {
        return Some("zephyr");
    }
    if has("<start_of_turn>") {
        return Some("gemma");
    }
    if has("<|start_header_id|>") && has("<|end_header_id|>") {
        return Some("llama3");
    }
    None
}
