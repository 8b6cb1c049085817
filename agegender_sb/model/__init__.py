"""The model card's computation: normaliser, wav2vec2 encoder, pooling and heads, composed by
:class:`~agegender_sb.model.network.AgeGenderModel`. No loading and no speed code.
"""
