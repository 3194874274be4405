-- Orthanc auto-routing: forward every MR instance to the PINN node as soon as Orthanc has
-- stored it, except the node's own results (their series descriptions end in
-- "(PINN node)"), so nothing loops. The node itself decides when a series is complete.
function OnStoredInstance(instanceId, tags, metadata, origin)
  local description = tags['SeriesDescription'] or ''
  if tags['Modality'] == 'MR' and not string.find(description, '(PINN node)', 1, true) then
    SendToModality(instanceId, 'pinn_node')
  end
end
