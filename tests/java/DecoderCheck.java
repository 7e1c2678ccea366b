import com.amazonaws.ml.mms.util.codec.ModelResponseDecoder;
import com.amazonaws.ml.mms.util.messages.ModelWorkerResponse;
import com.amazonaws.ml.mms.util.messages.Predictions;
import io.netty.buffer.Unpooled;
import io.netty.channel.embedded.EmbeddedChannel;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.Objects;

/**
 * Feeds each worker-response frame named on the command line to whichever ModelResponseDecoder is first on
 * the class path: whole, cut in two at every byte, and one byte at a time. Prints one line per frame:
 * "<file> cuts=<n> failures=<k> <first failure>" where a failure is an exception or a response that differs
 * from the uncut one. Used by tests/unit/test_mms_decoder.py.
 */
public final class DecoderCheck {

    public static void main(String[] args) throws Exception {
        for (String file : args) {
            byte[] frame = Files.readAllBytes(Path.of(file));
            String reference = describe(decode(List.of(frame)));
            int failures = 0;
            String first = "";
            List<List<byte[]>> feeds = new ArrayList<>();
            for (int cut = 1; cut < frame.length; cut++) {
                feeds.add(List.of(Arrays.copyOfRange(frame, 0, cut), Arrays.copyOfRange(frame, cut, frame.length)));
            }
            List<byte[]> bytes = new ArrayList<>();
            for (byte b : frame) {
                bytes.add(new byte[] {b});
            }
            feeds.add(bytes);
            for (List<byte[]> feed : feeds) {
                String got;
                try {
                    got = describe(decode(feed));
                } catch (Exception e) {
                    got = e.toString();
                }
                if (!got.equals(reference)) {
                    failures++;
                    if (first.isEmpty()) {
                        first = "first at cut " + feed.get(0).length + ": " + got.replace('\n', ' ');
                    }
                }
            }
            System.out.println(Path.of(file).getFileName() + " cuts=" + feeds.size() + " failures=" + failures + " " + first);
        }
    }

    private static List<Object> decode(List<byte[]> parts) {
        EmbeddedChannel channel = new EmbeddedChannel(new ModelResponseDecoder(6 * 1024 * 1024));
        List<Object> out = new ArrayList<>();
        for (byte[] part : parts) {
            channel.writeInbound(Unpooled.wrappedBuffer(part));
            for (Object message = channel.readInbound(); message != null; message = channel.readInbound()) {
                out.add(message);
            }
        }
        channel.finishAndReleaseAll();
        return out;
    }

    private static String describe(List<Object> messages) {
        StringBuilder text = new StringBuilder("messages=" + messages.size());
        for (Object message : messages) {
            ModelWorkerResponse response = (ModelWorkerResponse) message;
            text.append("\ncode=").append(response.getCode()).append(" message=").append(response.getMessage());
            for (Predictions p : response.getPredictions()) {
                text.append("\n id=").append(p.getRequestId())
                        .append(" type=").append(p.getContentType())
                        .append(" status=").append(p.getStatusCode())
                        .append(" phrase=").append(p.getReasonPhrase())
                        .append(" headers=").append(Objects.toString(p.getHeaders()))
                        .append(" body=").append(Arrays.hashCode(p.getResp())).append('/').append(p.getResp().length);
            }
        }
        return text.toString();
    }
}
