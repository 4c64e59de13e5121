# Run from the repository root: python deepgen_core/assets/make_tiny_tokenizer.py
# Builds the bundled tiny byte-level BPE tokenizer (Qwen2 layout and special tokens) from a fixed corpus.
from tokenizers import Tokenizer, models, trainers, pre_tokenizers, decoders
from transformers import PreTrainedTokenizerFast
SPECIALS=["<|endoftext|>","<|im_start|>","<|im_end|>","<|object_ref_start|>","<|object_ref_end|>","<|box_start|>","<|box_end|>","<|quad_start|>","<|quad_end|>","<|vision_start|>","<|vision_end|>","<|vision_pad|>","<|image_pad|>","<|video_pad|>"]
colors="red green blue yellow orange purple pink white black gray brown cyan".split()
shapes="circle square triangle star cube sphere cat dog house tree car boat sky lake castle".split()
words="a an the on of in under next to with and make turn into put from first second image generate background small large left right top bottom center text word sign says blurry low quality resolution".split()
corpus=[f"a {c} {s} on a {d} background" for c in colors for s in shapes for d in colors]+[" ".join(words)]*20
tok=Tokenizer(models.BPE()); tok.pre_tokenizer=pre_tokenizers.ByteLevel(add_prefix_space=False); tok.decoder=decoders.ByteLevel()
tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=480, special_tokens=[], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
tok.add_special_tokens(SPECIALS)
tk=PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>", additional_special_tokens=SPECIALS[1:])
tk.save_pretrained("deepgen_core/assets/tiny-tokenizer")
print(len(tk), tk.convert_tokens_to_ids(["<|endoftext|>","<|image_pad|>","<|vision_start|>","<|vision_end|>","<|video_pad|>"]))
