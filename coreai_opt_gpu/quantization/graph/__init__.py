"""Graph mode: the model exported with `torch.export`, annotated by our config resolution
(`annotator.ConfigAnnotator`, a torchao pt2e Quantizer), prepared with torchao's
`prepare_pt2e` (`prepare`), finalized into Core AI or plain-PyTorch ops (`finalize`).
Importing it imports torchao."""
