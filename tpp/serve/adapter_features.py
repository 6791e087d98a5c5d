"""Features of the backbone with a TPP / LoRA adapter for in-context prediction (:mod:`tpp.incontext`): the
adapter is checked as a store checks one before anything is copied, and goes onto a shared-weight copy."""
from __future__ import annotations

from tpp.errors import TppError
from tpp.incontext.features import Extractor


def with_adapter(extractor: Extractor, adapter: str) -> Extractor:
    """A copy of ``extractor`` whose encoder carries ``adapter`` (checked as a store checks one: registered
    adapter method, tensor names by its key rule, finite floats, trained on this backbone; a store version folder,
    named by 16 hex digits, must hold the files its content hash names). Shared weights: the backbone is not
    copied, and its hash must be unchanged afterwards."""
    from tpp.adapter_dir import verify_backbone
    from tpp.adapter_read import read_adapter_dir
    from tpp.adapters import check_tensor_names
    from tpp.backbones import Encoder, backbone_hash
    from tpp.adapter_checks import attach_from_card
    from tpp.model import load_adapter_state
    from tpp.serve.bank import move_own_tensors, share_weights_copy
    from tpp.serve.integrity import adapter_method, parse_tensors
    from tpp.serve.store import adapter_dir_of

    path = adapter_dir_of(adapter)
    # each file read once, never through a link: a version folder's every file, as its content hash verified them (a
    # file changed on disk is refused naming the folder, one swapped after that read is never read); another
    # folder's card and the weights file it names
    card, files, _ = read_adapter_dir(path, weights=True, follow=False)
    method = adapter_method(card, str(path))
    weights = card.get("weights_file")
    state = parse_tensors(files, weights, str(path)) if weights else {}
    check_tensor_names(method, state, str(path))
    verify_backbone(card, extractor.info, str(path))
    base = extractor.encoder
    encoder = Encoder(share_weights_copy(base.model), base.family)
    attach_from_card(encoder, card, str(path))
    move_own_tensors(encoder.model, extractor.device)
    load_adapter_state(encoder, {k: v.to(extractor.device) for k, v in state.items()}, str(path))
    if backbone_hash(base.model) != extractor.info.hash:
        raise TppError(f"adapter '{path}' changed the backbone's weights while it was attached; refused.")
    return Extractor(encoder.eval(), extractor.info, extractor.device, str(path), extractor.precision)
