package com.amazonaws.ml.mms.util.codec;

import com.amazonaws.ml.mms.util.messages.ModelWorkerResponse;
import com.amazonaws.ml.mms.util.messages.Predictions;
import io.netty.buffer.ByteBuf;
import io.netty.channel.ChannelHandlerContext;
import io.netty.handler.codec.ByteToMessageDecoder;
import io.netty.handler.codec.CorruptedFrameException;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;

/**
 * torch-mme's decoder of the responses a model worker sends to MMS (multi-model-server 1.1.11's frontend).
 *
 * <p>It has the name of MMS's own class and is found first on MMS's class path ("." comes before the
 * jar; torch-mme serve starts Java in a folder holding this class), so it replaces that class unchanged
 * elsewhere.
 *
 * <p>Why: netty hands the decoder whatever one read returned, and the read size adapts to the recent
 * messages, so a response can arrive cut at any byte. MMS's decoder waits for more bytes at most cuts
 * but throws when a response is cut inside a prediction's status code or its header map (which always
 * holds the content type). MMS then closes the connection and restarts the worker, and every request
 * on it fails with "Worker died.": about one request in 10,000 when small and long responses mix. Here
 * every field waits for its bytes; the wire format is unchanged.
 *
 * <p>A response: code (int), message (string), then per request: request id (string; length -1 ends the
 * list), content type (string), status (int), reason phrase (string), header count (int) and that many
 * name/value strings, body (bytes). A string or bytes is an int length and that many bytes; ints are
 * big-endian.
 */
public class ModelResponseDecoder extends ByteToMessageDecoder {

    private static final int END = -1;

    private final int maxBufferSize;

    public ModelResponseDecoder(int maxBufferSize) {
        this.maxBufferSize = maxBufferSize;
    }

    @Override
    protected void decode(ChannelHandlerContext ctx, ByteBuf in, List<Object> out) {
        in.markReaderIndex();
        try {
            out.add(readResponse(in));
        } catch (Incomplete incomplete) {
            in.resetReaderIndex(); // called again when more bytes have arrived
        }
    }

    private ModelWorkerResponse readResponse(ByteBuf in) {
        ModelWorkerResponse response = new ModelWorkerResponse();
        response.setCode(readInt(in));
        response.setMessage(readString(in, readLength(in)));
        List<Predictions> predictions = new ArrayList<>();
        for (int length = readLength(in); length != END; length = readLength(in)) {
            Predictions prediction = new Predictions();
            prediction.setRequestId(readString(in, length));
            prediction.setContentType(readString(in, readLength(in)));
            prediction.setStatusCode(readInt(in));
            prediction.setReasonPhrase(readString(in, readLength(in)));
            prediction.setHeaders(readHeaders(in, readLength(in)));
            prediction.setResp(readBytes(in, readLength(in)));
            predictions.add(prediction);
        }
        response.setPredictions(predictions);
        return response;
    }

    private Map<String, String> readHeaders(ByteBuf in, int count) {
        if (count < 0) {
            throw new CorruptedFrameException("Invalid header count: " + count);
        }
        Map<String, String> headers = new HashMap<>();
        for (int i = 0; i < count; i++) {
            String name = readString(in, readLength(in));
            headers.put(name, readString(in, readLength(in)));
        }
        return headers;
    }

    private static int readInt(ByteBuf in) {
        if (in.readableBytes() < 4) {
            throw Incomplete.INSTANCE;
        }
        return in.readInt();
    }

    private int readLength(ByteBuf in) {
        int length = readInt(in);
        if (length > maxBufferSize) {
            throw new CorruptedFrameException("Message size exceed limit: " + length);
        }
        return length;
    }

    private static String readString(ByteBuf in, int length) {
        return new String(readBytes(in, length), StandardCharsets.UTF_8);
    }

    private static byte[] readBytes(ByteBuf in, int length) {
        if (length < 0) {
            throw new CorruptedFrameException("Invalid message size: " + length);
        }
        if (in.readableBytes() < length) {
            throw Incomplete.INSTANCE;
        }
        byte[] bytes = new byte[length];
        in.readBytes(bytes);
        return bytes;
    }

    /** The response has not fully arrived: control flow, so one shared instance without a stack trace. */
    private static final class Incomplete extends RuntimeException {
        private static final long serialVersionUID = 1L;
        static final Incomplete INSTANCE = new Incomplete();

        private Incomplete() {
            super(null, null, false, false);
        }
    }
}
