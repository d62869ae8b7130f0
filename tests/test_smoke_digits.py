

def test_digits_model_is_trained_and_onnx_keeps_accuracy(digits_model, digits_data, digits_onnx):
    import torch

    from edgecls.classifier import Classifier
    from edgecls.calibration.preprocess import to_model_input
    model, spec = digits_model
    _, _, val, _ = digits_data
    crops = val.crops(spec)
    with torch.no_grad():
        torch_pred = model(torch.from_numpy(to_model_input(crops, spec))).argmax(1).numpy()
    acc = float((torch_pred == val.labels()).mean())
    assert acc > 0.9, acc
    clf = Classifier(digits_onnx)
    onnx_pred = clf.probabilities(list(crops)).argmax(1)
    assert (onnx_pred == torch_pred).mean() >= 0.995
