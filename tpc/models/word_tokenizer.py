"""A byte-level BPE tokenizer whose merges make common English words single tokens, built in code.

The tiny presets tokenize bytes: every character of a prompt is one token. That is fine for tests,
but a bench preset that stands for a real checkpoint then feeds its decoder about 4x the text
tokens the checkpoint's own BPE tokenizer would (a chat template's system prompt and a 14-word
question: 126 tokens instead of ~37), which skews every prefill measurement towards the text.
This tokenizer trains byte-level BPE merges (``tokenizers``' ``BpeTrainer``, deterministic) on
``WORDS`` in the four spellings a BPE vocabulary learns them in (``word``, `` word``, ``Word``,
`` Word``), so a common word is one token, as in Qwen's or Llama's vocabularies, and any other
text still encodes, byte by byte. Special tokens keep ids ``0..len(special)-1``.
"""

from __future__ import annotations

# Common English function and content words, the chat templates' words, and what people ask
# vision-language models about pictures and documents.
WORDS = """
the of and to a in is it you that he was for on are with as his they be at one have this from or had
by not word but what some we can out other were all there when up use your how said an each she which
do their time if will way about many then them write would like so these her long make thing see him
two has look more day could go come did number sound no most people my over know water than call first
who may down side been now find any new work part take get place made live where after back little
only round man year came show every good me give our under name very through just form sentence great
think say help low line differ turn cause much mean before move right boy old too same tell does set
three want air well also play small end put home read hand port large spell add even land here must
big high such follow act why ask men change went light kind off need house picture try us again animal
point mother world near build self earth father head stand own page should country found answer school
grow study still learn plant cover food sun four between state keep eye never last let thought city
tree cross farm hard start might story saw far sea draw left late run while press close night real
life few north open seem together next white children begin got walk example ease paper group always
music those both mark often letter until mile river car feet care second book carry took science eat
room friend began idea fish mountain stop once base hear horse cut sure watch color colour face wood
main enough plain girl usual young ready above ever red list though feel talk bird soon body dog family
direct pose leave song measure door product black short numeral class wind question happen complete
ship area half rock order fire south problem piece told knew pass since top whole king space heard best
hour better true during hundred five remember step early hold west ground interest reach fast verb sing
listen six table travel less morning ten simple several vowel toward war lay against pattern slow center
love person money serve appear road map rain rule govern pull cold notice voice unit power town fine
certain fly fall lead cry dark machine note wait plan figure star box noun field rest correct able
pound done beauty drive stood contain front teach week final gave green oh quick develop ocean warm
free minute strong special mind behind clear tail produce fact street inch multiply nothing course stay
wheel full force blue object decide surface deep moon island foot system busy test record boat common
gold possible plane stead dry wonder laugh thousand ago ran check game shape equate hot miss brought
heat snow tire bring yes distant fill east paint language among
assistant user helpful image images photo photograph describe description detail details detailed
written text sign signs total price receipt document chart graph diagram screen label labels caption
object objects background foreground left right center top bottom person people wearing holding
standing sitting color colors shown showing visible many how much which where who whom whose
please briefly answer question short sentence word words count counts scene scenes
""".split()


def build_word_tokenizer(special_tokens: tuple[str, ...]):
    """A ``tokenizers.Tokenizer``: ``special_tokens`` first, the 256 byte symbols, then the merges of ``WORDS``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=1 << 20,  # no limit: merge until every word is one token
        min_frequency=1,
        special_tokens=list(special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    spellings = []
    for word in dict.fromkeys(WORDS):  # unique, in order
        for form in (word, word.capitalize()):
            spellings += [form, " " + form]
    backend.train_from_iterator(spellings, trainer)
    return backend
