-- Every CT series that has become stable goes to the DICOM node (the modality `covidct`), as
-- one asynchronous C-STORE job (a failed job shows in Orthanc's /jobs and can be resubmitted);
-- the node's own results (SR, Secondary Captures) are not CT and stay here.
function OnStableSeries(seriesId, tags, metadata)
  if tags['Modality'] == 'CT' then
    RestApiPost('/modalities/covidct/store',
                '{"Resources": ["' .. seriesId .. '"], "Asynchronous": true}', true)
  end
end
