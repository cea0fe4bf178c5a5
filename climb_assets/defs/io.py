"""A JSON IO manager for the search loop's small op outputs (summaries and paths, never pickle).

Heavy artifacts (checkpoints, token arrays, tables) are written by the ops themselves through
the profile's store; what passes between steps is JSON under `<storage.root>/_io/`.
"""

import dagster as dg

from climb_assets.defs.resources import ClimbResource


class JsonIOManager(dg.ConfigurableIOManager):
    """Stores op outputs as JSON; asset outputs by asset key and partition, others by run/step."""

    climb: dg.ResourceDependency[ClimbResource]

    def _asset_rel(self, key: dg.AssetKey, partition: str | None) -> str:
        return f"_io/{'/'.join(key.path)}/{partition or 'all'}.json"

    def _rel(self, context: dg.OutputContext) -> str:
        if context.has_asset_key:
            partition = context.partition_key if context.has_partition_key else None
            return self._asset_rel(context.asset_key, partition)
        mapping = f"[{context.mapping_key}]" if context.mapping_key else ""
        return f"_io/steps/{context.run_id}/{context.step_key}{mapping}/{context.name}.json"

    def handle_output(self, context: dg.OutputContext, obj: object) -> None:
        if obj is None:
            return
        self.climb.store().write_json(self._rel(context), obj)

    def load_input(self, context: dg.InputContext) -> object:
        store = self.climb.store()
        if context.has_asset_key and context.has_asset_partitions:
            values = {}
            for key in context.asset_partition_keys:
                rel = self._asset_rel(context.asset_key, key)
                if store.exists(rel):
                    values[key] = store.read_json(rel)
            if len(context.asset_partition_keys) <= 1:
                return next(iter(values.values()), None)
            return values
        if context.has_asset_key:
            return store.read_json(self._asset_rel(context.asset_key, None))
        return store.read_json(self._rel(context.upstream_output))
