"""Training backends: the DPO update with TRL (`update`, its rows in `training_rows`, all reliance on TRL
internals in `trl_compat`), the reference (`reference`, over the policy's snapshots in `policy_weights`), LoRA,
the KL estimate, several training processes (`distributed`), the machine's defaults (`devices`) and the reward
model trainer. Tied to TRL's, PEFT's and torch's versions; the round's stages never import this package, only the
`Updater` role of `onpolicy.interfaces`."""
