"""Training backends: the DPO update with TRL (`update`, its rows in `training_rows`, all reliance on TRL
internals in `trl_compat`), the policy's storage, one kind per mode (`policy_storage`: full weights, a LoRA
adapter, FSDP2 shards), the reference (`reference`, over the policy's snapshots in `snapshots`, held with its
storage in `policy_weights`), LoRA, FSDP2 sharding, the KL estimate, several training processes (`distributed`)
and the reward model trainer. Tied to TRL's, PEFT's and torch's versions; the round's stages never import this
package, only the `Updater` role of `onpolicy.interfaces`, and it imports nothing of `onpolicy.generation`."""
