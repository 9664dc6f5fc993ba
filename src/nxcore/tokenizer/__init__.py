"""tokenizer"""

from nxcore.tokenizer.text import BPETokenizer, SpecialTokens, TokenBatch
from nxcore.tokenizer.vocabulary import Vocabulary

__all__ = ["BPETokenizer", "SpecialTokens", "TokenBatch", "Vocabulary"]
